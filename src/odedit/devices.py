"""Device and dtype names -> torch objects (CPU and float32 are the defaults)."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str) -> torch.device:
    """Map ``auto|cpu|cuda|cuda:N|mps`` to a ``torch.device``; ValueError if unavailable."""
    name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but CUDA is not available on this machine")
    if name == "mps" and not mps_available():
        raise ValueError("--device mps was requested but MPS is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown --device {name!r}: {err}") from None


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}") from None


def cpu_has_fast_bf16() -> bool:
    """True where this CPU multiplies bf16 in hardware (AMX-BF16 or AVX512-BF16).

    Elsewhere (e.g. AVX2-only CPUs) PyTorch emulates bf16 and is far slower than float32:
    one training step of the ``cpu64`` UNet (batch 32) took > 100 s in bf16 autocast on a
    2-core AVX2 EPYC against 4.3 s in float32, while an AMX Xeon ran it 2.6x faster than
    float32. Detected from ``torch.cpu.get_capabilities()`` where this PyTorch has it, else from
    the flags in /proc/cpuinfo (Linux); False when neither can tell.
    """
    get = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if get is not None:
        try:
            caps = get()
        except Exception:  # pragma: no cover - the capability query is best-effort across versions
            caps = {}
        if "amx_bf16" in caps or "avx512_bf16" in caps:
            return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))
    return _cpuinfo_has_bf16("/proc/cpuinfo")


def _cpuinfo_has_bf16(path: str) -> bool:
    """The amx_bf16 / avx512_bf16 flags of a Linux cpuinfo file (False if unreadable)."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def auto_dtype(device: torch.device) -> torch.dtype:
    """The compute dtype ``--dtype auto`` picks: bfloat16 on a CPU with bf16 hardware, else float32.

    The accuracy it rests on (benchmarks/bench_bf16.py, docs/performance.md): with the shipped
    prior, bf16 restorations (``--preset fast``, 24 val faces, same seeds) lie 48.5 dB (median
    PSNR) from the float32 ones, against 25.2 dB for a change of restoration seed, and their
    PSNR against the clean faces moves -0.004 +/- 0.007 dB. The threshold: closer to float32
    than a new seed, and within 0.1 dB. GPUs keep float32 until bf16 has been measured on one.
    """
    if torch.device(device).type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def resolve_dtype_for(name: str, device: torch.device) -> torch.dtype:
    """Like :func:`resolve_dtype`, and ``auto`` -> :func:`auto_dtype` for ``device``."""
    return auto_dtype(device) if name == "auto" else resolve_dtype(name)


def auto_mixed_precision(on_cpu: bool) -> str:
    """``odedit train --mixed-precision auto``: bf16 autocast where it is fast, else fp32 ("no").

    CPU: bf16 only with bf16 hardware (see :func:`cpu_has_fast_bf16`). CUDA: bf16 where the
    GPU supports it (Ampere and newer), the usual choice for diffusion training.
    """
    if on_cpu or not torch.cuda.is_available():
        return "bf16" if cpu_has_fast_bf16() else "no"
    try:  # native bf16 only (Ampere and newer): emulated bf16 on older GPUs is slow, as on CPUs
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # pragma: no cover - PyTorch < 2.3 has no emulation argument
        native = torch.cuda.is_bf16_supported()
    return "bf16" if native else "no"


def launched_processes() -> int:
    """How many processes the launcher (``torchrun``, ``accelerate launch``, MPI) started: the
    ``WORLD_SIZE`` environment variable, 1 without a launcher. A value that is not a whole number
    of at least 1 raises ``ValueError`` naming it."""
    import os

    raw = os.environ.get("WORLD_SIZE", "").strip() or "1"
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"WORLD_SIZE={raw!r} is not a number of processes (a whole number >= 1)")
    return n


def needs_cpu_process_group(launched: int) -> bool:
    """True when ``launched`` processes must be asked to form their group on the CPU (gloo):
    accelerate forms one only when asked, and otherwise each process would run alone. That is
    the case without an accelerator that has a distributed backend of its own (CUDA, XPU, NPU,
    HPU, ...); MPS has none, so processes on a Mac group on the CPU too."""
    if launched <= 1:
        return False
    accelerator = torch.accelerator.current_accelerator() if hasattr(torch, "accelerator") else None
    if accelerator is None and torch.cuda.is_available():  # torch without torch.accelerator
        return False
    return accelerator is None or accelerator.type == "mps"


def process_group_mismatch(launched: int, formed: int, consequence: str) -> str | None:
    """The error message when accelerate formed a group of ``formed`` processes where the launcher
    started ``launched`` (``consequence``: what would go wrong), else None."""
    if launched > 1 and formed != launched:
        return (f"launched as {launched} processes but accelerate formed a group of {formed}; {consequence}. "
                "Use `accelerate launch` on GPUs or `torchrun --nproc_per_node N` on CPUs")
    return None
