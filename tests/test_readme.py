"""The README's tables match the code: every module of src/odedit has a row of the layout table
(and every row names a module that exists), and the optional-extras table lists pyproject's extras."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "odedit"


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start: end if end >= 0 else None]


def _first_cells(section: str) -> list[str]:
    return [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]


def test_layout_table_matches_the_modules():
    named = {name for cell in _first_cells(_section("Layout")) for name in re.findall(r"`([^`]+)`", cell)}
    modules = {p.name for p in PKG.glob("*.py") if not p.name.startswith("__")}
    packages = {p.name + "/" for p in PKG.iterdir() if (p / "__init__.py").exists()}
    assert named == modules | packages
    # and the submodules named in a package's row exist
    rows = {line.split("|")[1].strip(): line.split("|")[2] for line in _section("Layout").splitlines()
            if line.startswith("| `")}
    for package in ("metrics", "bench"):
        row = next(v for k, v in rows.items() if f"`{package}/`" in k)
        for sub in re.findall(r"`(\w+)`", row):
            if not sub[0].isupper():
                assert (PKG / package / f"{sub}.py").exists(), (package, sub)


def test_extras_table_matches_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    rows = {re.findall(r"`(\w+)`", line.split("|")[1])[0]: line.split("|")[2]
            for line in _section("Optional extras").splitlines() if line.startswith("| `")}
    assert set(rows) == set(extras)
    for extra, requirements in extras.items():
        for req in requirements:
            name = re.split(r"[<>=!~ \[]", req)[0]
            assert name.lower() in rows[extra].lower(), (extra, name)
