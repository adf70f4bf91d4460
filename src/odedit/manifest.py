"""``OUTDIR/restore.json``: what ``odedit restore`` did, read and written here.

The file holds two tables, merged across runs:

* ``runs``: one entry per run (a time-stamped, randomly tagged id): the code, method, resolved
  config, model, device, dtype, base seed and whole-photo settings, and how the run ended
  (``status``: ``complete`` | ``stopped`` (with ``error``) | ``interrupted``; ``failures``; the
  inputs copied unchanged for want of a face, ``no_face``).
* ``images``: one entry per output file name: its input, seed, run, sizes, mode and status,
  and for whole photos each face (:func:`odedit.faces.finish_photo`).

Every write merges this run's entries into the file's current content under an exclusive lock
on the folder (two processes may write into one folder) and replaces the file atomically
(:func:`odedit.atomic.write_json_atomic`). A rerun into its own input folder leaves out the
files the manifest lists as earlier outputs (:func:`drop_earlier_outputs`).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Optional, Sequence

from odedit.atomic import write_json_atomic

SIDECAR = "restore.json"
RUN_STATUSES = ("complete", "stopped", "interrupted")


class ManifestError(Exception):
    """restore.json cannot be read (not JSON) or written; the message says which and why."""


def load(path: os.PathLike | str) -> dict:
    """The manifest at ``path`` ({} when there is none); ManifestError when it is not JSON."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ManifestError(f"{path} exists but is not valid JSON; move it away or pick another output folder")
    return data if isinstance(data, dict) else {}


def merge(path: os.PathLike | str, ours: dict) -> None:
    """Merge ``ours`` (``{"runs": ..., "images": ...}``) into the manifest at ``path`` under an
    exclusive lock on its folder, so that two processes writing into one folder keep each
    other's entries; the file is replaced atomically. ManifestError when it cannot be written."""
    path = Path(path)
    try:
        with folder_lock(path.parent):
            current = load(path)
            current.setdefault("runs", {}).update(ours["runs"])
            current.setdefault("images", {}).update(ours["images"])
            write_json_atomic(path, current)
    except OSError as err:
        raise ManifestError(f"cannot write {path}: {err.strerror or err}") from None


class folder_lock:
    """flock on the folder itself (POSIX; leaves no lock file behind). Without fcntl (Windows)
    there is no cross-process lock: use one process per output folder there."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.fd = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        self.fd = os.open(self.folder, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock


# ---- the rerun rule ---------------------------------------------------------------------------


def entry_path(path: Path) -> Path:
    """Absolute path of the directory entry itself: its folder resolved (symlinks, ..), the
    entry not followed."""
    try:
        return path.absolute().parent.resolve() / path.name
    except (OSError, RuntimeError):  # a symlink loop
        return path.absolute()


def real_path(path: Path) -> Path:
    """``path`` with every symlink followed (the entry itself too), as far as it exists."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def drop_earlier_outputs(files: list[Path], inputs: Sequence[str], outdir: Path) -> tuple[list[Path], int]:
    """Leave out the files of an input folder that is the output folder itself and that its
    restore.json lists as outputs of earlier runs: a rerun into the input folder
    (``odedit restore same -o same``) must not take its own results for photos. Files named
    explicitly are kept (the caller refuses to write over them). Returns the kept files and
    how many were left out; ManifestError when the manifest is not JSON."""
    target = real_path(outdir)
    if not any(Path(i).is_dir() and real_path(Path(i)) == target for i in inputs):
        return files, 0
    images = load(outdir / SIDECAR).get("images")
    listed = {target / str(name) for name in images} if isinstance(images, dict) else set()
    explicit = {entry_path(Path(i)) for i in inputs if not Path(i).is_dir()}
    kept = [f for f in files if entry_path(f) not in listed or entry_path(f) in explicit]
    return kept, len(files) - len(kept)


# ---- building this run's entries --------------------------------------------------------------


def new_run_id(base_seed: int) -> str:
    """A run's id: its start time, base seed and a random tag (two runs, processes or calls,
    may start in the same second with the same seed)."""
    return time.strftime("%Y%m%dT%H%M%S") + f"-{base_seed}-{secrets.token_hex(3)}"


def run_settings(
    *,
    method: str,
    config,
    model: Optional[str],
    image_size: int,
    device,
    dtype,
    dtype_requested: str,
    compile: bool,
    skipped_existing: int,
    photo_settings: dict,
    command: Sequence[str],
) -> dict:
    """A run's ``runs`` entry before it ends: the code (version, git commit), the method and
    resolved ``config``, the model (``model``: its folder or hub id, None = the embedded prior),
    device and dtype (the one that ran and the one asked for), the photo settings
    (:meth:`odedit.pipeline.PipelineOptions.settings`: base seed, faces mode, fit, ...) and the
    command line."""
    from odedit.models import model_identity
    from odedit.provenance import code_identity

    return {
        **code_identity(),  # odedit_version, git_commit, git_dirty
        "method": method,
        "config": config.to_dict(),
        "model": model_identity(model),
        "image_size": image_size,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "dtype_requested": dtype_requested,
        "compile": compile,
        "skipped_existing": skipped_existing,
        **photo_settings,
        "command": command,
    }


def image_entry(input_path: str, run_id: str, info: dict, output_shape: Optional[tuple] = None) -> dict:
    """An output's ``images`` entry from what the pipeline said about it (``info``:
    :meth:`odedit.pipeline.Pipeline.run`): its input, seed, run, input and output sizes, mode,
    status, for whole photos the faces (when any), the faces left out, the upsampler and
    why none was looked for, and for aligned crops the gate's settings and the share it kept."""
    entry = {
        "input": input_path,
        "seed": info["seed"],
        "run": run_id,
        "input_size": info["input_size"],
        "mode": info["mode"],
        "status": info["status"],
    }
    if info["mode"] == "faces" and info.get("faces"):
        entry["upsampler"] = info["upsampler"]
        entry["faces"] = info["faces"]
    if info["mode"] == "faces":
        entry["faces_left_out"] = info["faces_left_out"]  # found beyond max_faces, not restored
    if info["mode"] == "aligned":
        for key in ("fidelity", "match_colour", "low_band", "restoration_kept", "upsample_factor", "upsampler"):
            if key in info:
                entry[key] = info[key]
    if "no_face_reason" in info:
        entry["no_face_reason"] = info["no_face_reason"]
    if output_shape is not None:
        entry["output_size"] = [int(output_shape[1]), int(output_shape[0])]
    return entry


class RunManifest:
    """This run's entries (its settings, one entry per written output, how it ended), merged
    into ``OUTDIR/restore.json`` by :meth:`save`."""

    def __init__(self, outdir: os.PathLike | str, run_id: str, settings: dict):
        self.path = Path(outdir) / SIDECAR
        self.run_id = run_id
        self.data: dict = {"runs": {run_id: dict(settings)}, "images": {}}

    @property
    def images(self) -> dict:
        """Output file name -> entry, this run's."""
        return self.data["images"]

    def add_image(self, name: str, entry: dict) -> None:
        self.images[name] = entry

    def end(self, status: str, failures: Sequence[tuple[str, str]] = (), error: Optional[str] = None) -> None:
        """Record how the run ended: ``status`` (:data:`RUN_STATUSES`), the error that stopped
        it, the failed inputs as (input, message), and the inputs copied unchanged."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}, got {status!r}")
        entry = self.data["runs"][self.run_id]
        entry["status"] = status
        if error is not None:
            entry["error"] = error
        entry["failures"] = [{"input": f, "error": e} for f, e in failures]
        entry["no_face"] = sorted(
            e["input"] for e in self.images.values() if e.get("run") == self.run_id and e.get("status") != "restored"
        )

    def save(self) -> None:
        """Merge this run's entries into the file (:func:`merge`)."""
        merge(self.path, self.data)
