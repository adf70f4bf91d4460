"""Atomic writes: a temp file in the destination's folder, renamed over the final name.

Every file odedit writes as a result (PNGs, JSON sidecars, CSV records, model folders) goes
through here, so that a reader never sees half a file and a killed process leaves at most a
temp file behind. The rules:

* Temp names are short and independent of the final name: ``.odedit-<pid>-<random>.tmp``
  (about 30 bytes), so a final name that fits the file system's 255-byte limit always has a
  temp name that fits too.
* The temp file gets the mode of an ordinary ``open(path, "w")``: 0666 less the umask (mkstemp
  alone would leave 0600, unreadable to a web server or another user).
* On any error (or interrupt) the temp file is removed and the error re-raised.

:func:`remove_stale_temps` deletes the temps of killed writers, identified by their pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

TEMP_PREFIX = ".odedit-"
TEMP_SUFFIX = ".tmp"
# Names of earlier odedit versions, still recognised by remove_stale_temps:
LEGACY_PNG_SUFFIX = ".png.tmp"  # .<stem>.<pid>.<random>.png.tmp
LEGACY_JSON_MARK = ".tmp-"  # .<name>.tmp-<pid>


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (a brief window for other threads)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode an ordinary file write creates: 0666 less the umask."""
    return 0o666 & ~current_umask()


def temp_prefix() -> str:
    """Prefix of this process's temp names (carries the pid for :func:`remove_stale_temps`)."""
    return f"{TEMP_PREFIX}{os.getpid()}-"


@contextlib.contextmanager
def atomic_open(path: os.PathLike | str, mode: str = "wb", **open_kw) -> Iterator[IO]:
    """Open a temp file next to ``path`` for writing; on a clean exit, rename it to ``path``.

    ``mode`` is ``"wb"`` or ``"w"`` (then ``encoding``/``newline`` go in ``open_kw``).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(), suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kw) as fh:
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), file_mode())
            yield fh
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: os.PathLike | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text_atomic(path: os.PathLike | str, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically, newlines untranslated."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)


def write_json_atomic(path: os.PathLike | str, obj) -> None:
    """Write ``obj`` as JSON (indented, keys sorted, other types as ``str``) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def make_temp_dir(parent: os.PathLike | str) -> Path:
    """A new, short-named temp folder in ``parent`` with an ordinary folder's mode (0777 less
    the umask), to be filled and renamed into place by the caller."""
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(), suffix=TEMP_SUFFIX, dir=parent))
    with contextlib.suppress(OSError):
        os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def temp_owner_pid(name: str) -> int | None:
    """The writer's pid carried by an odedit temp name (current or legacy form), else None."""
    if not name.startswith("."):
        return None
    pid = None
    if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
        pid = name[len(TEMP_PREFIX) : -len(TEMP_SUFFIX)].split("-", 1)[0]
    elif name.endswith(LEGACY_PNG_SUFFIX):
        parts = name[1 : -len(LEGACY_PNG_SUFFIX)].split(".")
        pid = parts[-2] if len(parts) >= 3 else None
    elif LEGACY_JSON_MARK in name:
        pid = name.rsplit(LEGACY_JSON_MARK, 1)[1]
    return int(pid) if pid and pid.isdigit() else None


def remove_stale_temps(folder: os.PathLike | str) -> list[str]:
    """Delete temp files that a killed odedit process left in ``folder``.

    Only temps whose writer (the pid in the name, :func:`temp_owner_pid`) no longer exists
    are removed, so a concurrent writer is never disturbed. Returns the removed names.
    """
    removed = []
    for p in Path(folder).iterdir():
        pid = temp_owner_pid(p.name)
        if pid is None or not p.is_file() or _pid_alive(pid):
            continue
        with contextlib.suppress(FileNotFoundError):  # another process cleaned it first
            p.unlink()
            removed.append(p.name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OverflowError:  # not a pid this OS can have
        return False
    return True
