"""dtype / mixed-precision 'auto' resolution: bf16 only where the CPU has bf16 hardware."""

from __future__ import annotations

import pytest
import torch

from odedit import devices


@pytest.mark.parametrize("fast", [True, False])
def test_auto_follows_the_cpu_capability(monkeypatch, fast):
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: fast)
    want = torch.bfloat16 if fast else torch.float32
    assert devices.auto_dtype(torch.device("cpu")) is want
    assert devices.resolve_dtype_for("auto", torch.device("cpu")) is want
    assert devices.resolve_dtype_for("float16", torch.device("cpu")) is torch.float16
    assert devices.auto_mixed_precision(on_cpu=True) == ("bf16" if fast else "no")


def test_capability_agrees_with_torch_and_cpuinfo():
    caps = torch.cpu.get_capabilities()
    assert devices.cpu_has_fast_bf16() == bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags here")
    assert devices.cpu_has_fast_bf16() == bool({"amx_bf16", "avx512_bf16"} & set(flags))


def test_unknown_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown dtype"):
        devices.resolve_dtype_for("float8", torch.device("cpu"))
