"""bf16 numerics on CPUs without bf16 hardware, for measuring what bf16 costs in accuracy.

On a CPU without AMX-BF16 / AVX512-BF16, PyTorch's bf16 convolutions fall back to slow kernels:
one forward of the embedded prior at batch 2 took 10.2 s in bf16 against 0.35 s in float32 on
a 2-core AVX2 EPYC (2026-12-01), so bf16 restorations could not even be measured there.

:func:`emulate_bf16` runs a model whose weights were cast to bf16 (``--dtype bfloat16``) with
the same numerics as bf16 hardware, at float32 speed: the matrix products (convolution, mm,
addmm, bmm, baddbmm) take their bf16 operands exactly, multiply and accumulate in float32 and
round the result to bf16, which is what oneDNN's AMX/AVX512-BF16 kernels do (they differ only
in the order of the float32 accumulation). Every other op (group norm, SiLU, adds, attention,
up-sampling) runs in PyTorch's own bf16 kernels, unchanged. The emulation changes no dtype the
model sees; it is a measuring tool, not a speed-up.

Checked against real bf16 hardware (an AVX512-BF16 EPYC, 2026-12-02): op by op the emulated
products equal the native ones but for one-ulp rounding flips in 0.01-0.03 % of the elements
(the other summation order). Through a whole UNet those flips spread, so the emulated and the
native forward are two realisations of the same rounding noise: their errors against float32
agree in size within 3 %, element-wise they lie 0.5-0.9 of that size apart
(``tests/test_emulation.py``). Without bf16 hardware PyTorch's fallback kernels are float32
products rounded, and the emulation matches them exactly.

    model = load_model(None, dtype=torch.bfloat16)
    with emulate_bf16():
        eps = model(x, t)          # bf16 numerics, float32 speed
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

_aten = torch.ops.aten
# The ops whose bf16 CPU kernels are slow without bf16 hardware (the matrix products).
MATMUL_OPS = frozenset(
    {
        _aten.convolution.default,
        _aten.mm.default,
        _aten.addmm.default,
        _aten.bmm.default,
        _aten.baddbmm.default,
    }
)


def _to_float32(a):
    return a.float() if isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 else a


def _has_bf16(tree) -> bool:
    found = []
    tree_map(lambda a: found.append(True) if isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 else None, tree)
    return bool(found)


class emulate_bf16(TorchDispatchMode):
    """Context manager: bf16 matrix products computed as float32 products of the bf16 operands,
    rounded to bf16 (see the module docstring). Ops without bf16 operands are untouched."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in MATMUL_OPS and _has_bf16((args, kwargs)):
            out = func(*tree_map(_to_float32, args), **tree_map(_to_float32, kwargs))
            return out.to(torch.bfloat16)
        return func(*args, **kwargs)
