"""Install a trained model as the embedded default prior (src/odedit/weights/celeba64).

    python scripts/ship_default_model.py runs/prior/model

Loads the model (checking it loads through odedit's own loader), saves it (and its Gaussian
base, if it has one) as fp16
safetensors in the save_pretrained layout, writes checksums.json (the loader verifies
it, so a truncated file gives a clear error), and prints the size. Keep it <= 45 MB.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from odedit.gaussian import GAUSSIAN_DIR
from odedit.models import DEFAULT_MODEL_DIR, load_local, write_checksums
from odedit.unets import save_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="a save_pretrained model folder (e.g. written by odedit train)")
    ap.add_argument("--dest", type=Path, default=DEFAULT_MODEL_DIR)
    args = ap.parse_args()
    model = load_local(args.model)
    sched = args.model / "scheduler" / "scheduler_config.json"
    if not sched.is_file():
        sched = args.model / "scheduler_config.json"
    save_model(model.unet, args.dest, scheduler_config=json.loads(sched.read_text()), fp16=True)
    base = getattr(model, "base", None)  # the Gaussian base of a residual prior (basis in fp16)
    if base is not None:
        base.save(args.dest / GAUSSIAN_DIR)
    info = args.model / "odedit_train.json"  # provenance: step, images seen, settings
    if info.is_file():
        shutil.copyfile(info, args.dest / info.name)
    write_checksums(args.dest)
    total = sum(p.stat().st_size for p in args.dest.rglob("*") if p.is_file())
    print(f"installed {args.model} -> {args.dest} ({total / 2**20:.1f} MiB)")
    if total > 45 * 2**20:
        raise SystemExit("the default model must stay <= 45 MB")


if __name__ == "__main__":
    main()
