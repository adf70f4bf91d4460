"""Refactors keep restorations bit-identical: a few cheap cases of
``benchmarks/check_bit_identical.py`` against its stored reference hashes (the script runs
them all, ~30 s). Bitwise results depend on torch's kernels, so the test skips where the
torch version or the CPU capability differ from the reference's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "check_bit_identical.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("check_bit_identical", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _load_script()


@pytest.mark.usefixtures("single_thread")
def test_quick_cases_match_the_reference():
    ref = check.load_reference()
    if ref["environment"] != check.environment():
        pytest.skip(f"reference made with {ref['environment']}, this is {check.environment()}")
    hashes = check.compute(check.QUICK)
    assert set(check.QUICK) <= set(hashes)
    differs = sorted(name for name, h in hashes.items() if ref["hashes"][name] != h)
    assert not differs, f"outputs no longer bit-identical: {differs}"


def test_every_case_has_a_reference_hash():
    names = set(check.cases())
    ref = check.load_reference()["hashes"]
    assert names <= set(ref)
    assert {f"{n}@api" for n in check.API_CASES} <= set(ref)
