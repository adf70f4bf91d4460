"""code_identity: the commit of a tracked package, dirty when edited, None when not tracked."""

from __future__ import annotations

import shutil
import subprocess

import pytest

import odedit
from odedit.provenance import code_identity

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")


def _git(cwd, *args) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(cwd)}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    pkg = tmp_path / "src" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("x = 1\n")
    (tmp_path / ".gitignore").write_text("venv/\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "one")
    return tmp_path


def test_tracked_package_reports_head_and_cleanliness(repo):
    pkg = repo / "src" / "pkg"
    got = code_identity(pkg)
    assert got == {"odedit_version": odedit.__version__, "git_commit": _git(repo, "rev-parse", "HEAD"),
                   "git_dirty": False}
    (pkg / "__init__.py").write_text("x = 2\n")
    assert code_identity(pkg)["git_dirty"] is True
    _git(repo, "checkout", "-q", "--", ".")
    (pkg / "new_module.py").write_text("")  # new code runs too
    assert code_identity(pkg)["git_dirty"] is True


def test_changes_outside_the_package_do_not_make_it_dirty(repo):
    (repo / "notes.txt").write_text("results\n")
    assert code_identity(repo / "src" / "pkg")["git_dirty"] is False


def test_an_untracked_copy_inside_a_checkout_claims_no_commit(repo):
    """e.g. a non-editable install in the checkout's ignored virtual environment."""
    copy = repo / "venv" / "site-packages" / "pkg"
    copy.mkdir(parents=True)
    (copy / "__init__.py").write_text("x = 1\n")
    assert code_identity(copy) == {"odedit_version": odedit.__version__, "git_commit": None, "git_dirty": None}


def test_outside_any_checkout(tmp_path):
    (tmp_path / "__init__.py").write_text("")
    assert code_identity(tmp_path)["git_commit"] is None
