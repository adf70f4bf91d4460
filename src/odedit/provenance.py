"""Which code made a result: the odedit version and, in a git checkout, the commit.

Saved next to results (``odedit bench``'s bench.json, ``odedit restore``'s config) so a
table can name the code that produced it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional

__all__ = ["code_identity"]


def _git(args: list[str], cwd: Path) -> Optional[str]:
    """``git args`` in ``cwd``; None when git is missing, times out or fails (not a checkout)."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_identity(package_dir: Optional[Path] = None) -> dict:
    """``{"odedit_version", "git_commit", "git_dirty"}`` of the odedit source that runs.

    ``git_commit`` is the 40-hex HEAD of the git checkout that tracks the package (None for
    an installed wheel or an exported snapshot); ``git_dirty`` says whether the package's files
    differ from that commit (edited, deleted or new, untracked files not ignored; None
    without a commit). Never raises for a missing git: provenance is best-effort and says
    when it is unknown.
    """
    from odedit import __version__

    pkg = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parent
    # only a package tracked by the checkout counts: an installed copy inside some repository's
    # ignored virtual environment must not claim that repository's commit
    tracked = _git(["ls-files", "--error-unmatch", "__init__.py"], pkg) is not None
    commit = _git(["rev-parse", "--verify", "HEAD"], pkg) if tracked else None
    dirty = None
    if commit is not None:
        status = _git(["status", "--porcelain", "--", "."], pkg)
        dirty = None if status is None else bool(status)
    return {"odedit_version": __version__, "git_commit": commit, "git_dirty": dirty}
