"""bf16 emulation (odedit.emulation): the same numerics as PyTorch's own bf16 kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from odedit.emulation import emulate_bf16
from odedit.models import load_model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_matmul_is_float32_product_of_bf16_operands_rounded(single_thread):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 8, 12, 12, generator=g).bfloat16()
    w = torch.randn(16, 8, 3, 3, generator=g).bfloat16()
    m1, m2 = torch.randn(5, 7, generator=g).bfloat16(), torch.randn(7, 3, generator=g).bfloat16()
    with emulate_bf16():
        conv = F.conv2d(a, w, padding=1)
        mm = m1 @ m2
    assert conv.dtype == mm.dtype == torch.bfloat16
    assert torch.equal(conv, F.conv2d(a.float(), w.float(), padding=1).bfloat16())
    assert torch.equal(mm, (m1.float() @ m2.float()).bfloat16())


def test_float32_model_is_untouched(tiny_unet, single_thread):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ref = tiny_unet(x, 500)
    with emulate_bf16():
        out = tiny_unet(x, 500)
    assert torch.equal(out, ref)


def test_emulated_bf16_unet_matches_native_bf16(tiny_unet_dir, single_thread):
    """The emulated forward is far closer to PyTorch's native bf16 forward than either is to
    float32: it reproduces bf16's error, not some other error."""
    m32 = load_model(tiny_unet_dir)
    mbf = load_model(tiny_unet_dir, dtype=torch.bfloat16)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for t in (10, 500, 990):
        ref = m32(x, t)
        native = mbf(x, t)
        with emulate_bf16():
            emulated = mbf(x, t)
        assert emulated.dtype == native.dtype == torch.float32  # the adapter casts back
        err_bf16 = _rel(native, ref)
        assert 1e-3 < err_bf16 < 0.05  # bf16 really is in use (8-bit mantissa)
        assert _rel(emulated, native) < 0.5 * err_bf16
        assert abs(_rel(emulated, ref) - err_bf16) < 0.25 * err_bf16
