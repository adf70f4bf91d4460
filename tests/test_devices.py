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


def test_cpuinfo_fallback_reads_the_flags(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor : 0\nflags : fpu sse2 avx2 fma\n")
    assert devices._cpuinfo_has_bf16(str(fake)) is False
    fake.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_bf16 amx_tile\n")
    assert devices._cpuinfo_has_bf16(str(fake)) is True
    assert devices._cpuinfo_has_bf16(str(tmp_path / "missing")) is False
    # without torch's capability query the cpuinfo flags decide
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {}, raising=False)
    monkeypatch.setattr(devices, "_cpuinfo_has_bf16", lambda path: path == "/proc/cpuinfo")
    assert devices.cpu_has_fast_bf16() is True
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": False, "avx512_bf16": False})
    assert devices.cpu_has_fast_bf16() is False  # torch's answer wins where it has one


def test_unknown_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown dtype"):
        devices.resolve_dtype_for("float8", torch.device("cpu"))


def test_launched_processes_and_when_they_group_on_the_cpu(monkeypatch):
    import torch

    from odedit.devices import launched_processes, needs_cpu_process_group, process_group_mismatch

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_processes() == 1
    monkeypatch.setenv("WORLD_SIZE", " 4 ")
    assert launched_processes() == 4
    for bad in ("0", "-1", "2.5", "x"):
        monkeypatch.setenv("WORLD_SIZE", bad)
        with pytest.raises(ValueError, match="WORLD_SIZE"):
            launched_processes()
    for kind, group_on_cpu in ((None, True), ("mps", True), ("cuda", False), ("xpu", False)):
        acc = None if kind is None else torch.device(kind)
        monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *a, acc=acc, **k: acc)
        assert needs_cpu_process_group(2) is group_on_cpu, kind
        assert needs_cpu_process_group(1) is False
    assert process_group_mismatch(1, 1, "x") is None and process_group_mismatch(2, 2, "x") is None
    assert "formed a group of 1; each would run alone" in process_group_mismatch(2, 1, "each would run alone")
