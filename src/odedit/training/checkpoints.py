"""Files of a run folder: checkpoints, the exported model, JSON and the loss log.

Layout of ``OUT``: ``train_config.json`` (settings + resolved run facts), ``log.jsonl``,
``checkpoints/step_XXXXXXX/`` (accelerate state + ``trainer_state.json``), ``samples/``
and ``model/`` (the EMA weights, a ``save_pretrained`` folder). Every write is atomic:
built under a temporary name, then renamed into place. Temp names are short and independent
of the final name (:mod:`odedit.atomic`), so a run or model folder whose name is near the file
system's 255-byte limit works too.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from odedit.atomic import make_temp_dir, write_json_atomic, write_text_atomic
from odedit.training.config import TrainError
from odedit.unets import save_model

CHECKPOINTS = "checkpoints"
TRAIN_CONFIG = "train_config.json"
LOG_FILE = "log.jsonl"
TRAINER_STATE = "trainer_state.json"
TRAIN_INFO = "odedit_train.json"


def list_checkpoints(out: os.PathLike | str) -> list[Path]:
    """Complete checkpoints ``OUT/checkpoints/step_XXXXXXX``, oldest first."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("step_") and (p / TRAINER_STATE).is_file():
            try:
                found.append((int(p.name[5:]), p))
            except ValueError:
                continue
    return [p for _, p in sorted(found)]


def latest_checkpoint(out: os.PathLike | str) -> Optional[Path]:
    ckpts = list_checkpoints(out)
    return ckpts[-1] if ckpts else None


def _replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` to ``dst``, replacing an existing ``dst`` (two renames; the old
    ``dst`` waits in a short-named temp folder next to it, then is deleted)."""
    if dst.exists():
        holder = make_temp_dir(dst.parent)
        os.replace(dst, holder / "old")
        os.replace(src, dst)
        shutil.rmtree(holder, ignore_errors=True)
    else:
        os.replace(src, dst)


def export_model(
    unet, target: Path, scheduler_config: dict, fp16: bool = False, info: Optional[dict] = None, gaussian=None
) -> Path:
    """Write a ``save_pretrained`` model folder (+ ``odedit_train.json``, ``checksums.json``) atomically.

    ``gaussian`` (an :class:`odedit.gaussian.GaussianBase`) is saved in ``gaussian/``: the folder
    then loads as a Gaussian base plus the network's residual.

    The folder is built complete under a short temporary name (``.odedit-<pid>-<random>.tmp``,
    whatever the length of ``target``'s name) and renamed into place.
    """
    from odedit.models import write_checksums

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    holder = make_temp_dir(target.parent)
    staging = holder / "model"
    try:
        save_model(unet, staging, scheduler_config, fp16=fp16)
        if gaussian is not None:
            from odedit.gaussian import GAUSSIAN_DIR

            gaussian.save(staging / GAUSSIAN_DIR)
        if info is not None:
            (staging / TRAIN_INFO).write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
        write_checksums(staging)
        _replace_dir(staging, target)
    finally:
        shutil.rmtree(holder, ignore_errors=True)
    return target


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _load_weights(path: str):
    """(UNet2DModel in train mode, scheduler config, its Gaussian base or None) from a model folder."""
    from odedit.models import ModelLoadError, _find_layout, load_local

    root = Path(path).expanduser()
    if not root.is_dir():
        raise TrainError(f"--resume-from-weights {path!r} is not a folder (expected a save_pretrained model folder)")
    try:
        model = load_local(root, device="cpu", dtype=torch.float32)
        sched_cfg = json.loads(_find_layout(root)[1].read_text())
    except (ModelLoadError, OSError, json.JSONDecodeError) as err:
        raise TrainError(f"--resume-from-weights: {err}") from None
    if model.prediction_type != "epsilon":
        raise TrainError(
            f"--resume-from-weights {path}: the model predicts {model.prediction_type!r}; "
            "odedit train trains epsilon-prediction models only"
        )
    base = getattr(model, "base", None)
    return model.unet.requires_grad_(True).train(), sched_cfg, None if base is None else base.to("cpu")


def _truncate_log(path: Path, keep_upto: int) -> None:
    """Keep only log records with step <= keep_upto (a resumed run rewrites what followed)."""
    if keep_upto <= 0 or not path.is_file():
        if path.exists():
            path.unlink()
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= keep_upto:
                kept.append(line)
        except json.JSONDecodeError:
            continue
    write_text_atomic(path, "".join(k + "\n" for k in kept))
