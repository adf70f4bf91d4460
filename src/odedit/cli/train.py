"""``odedit train``: train an eps-prediction DDPM face prior (UNet2DModel) on a folder or zip."""

from __future__ import annotations

import argparse
from pathlib import Path

from odedit.cli.common import CLIError, ranged

DESCRIPTION = """\
Train a diffusion prior: an epsilon-prediction DDPM (linear betas 1e-4..0.02, 1000 steps,
the ODEdit paper's setting) with a diffusers UNet2DModel, on a folder (searched
recursively) or an uncompressed/compressed .zip of images. Images are decoded once into
memory at --resolution (Lanczos; --fit stretch resizes the whole frame, like `odedit
restore`'s default; --fit crop takes the central square first), randomly mirrored.

Runs on one CPU/GPU as is, on several GPUs with `accelerate launch`, and as one process
per CPU core with `torchrun --nproc_per_node N` (same flags; --batch-size is per process; a
run resumed with another number of processes keeps its global batch). Stop by --steps and/or --minutes (wall time, for budgeted
GPU runs). Outputs in --out:
  model/            EMA weights as a save_pretrained folder: `odedit restore --model OUT/model`
  checkpoints/      step_XXXXXXX/ (model, EMA, optimizer, counters), atomic; --resume continues
  samples/          step_XXXXXX.png grids of DDIM samples from the EMA weights
  log.jsonl         step, loss, loss_ema (smoothed), lr, images_per_s, elapsed_s
  train_config.json the resolved configuration

Ctrl-C (or SIGTERM) stops after the current step and still checkpoints and exports;
a second Ctrl-C aborts.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a diffusion face prior (DDPM, UNet2DModel)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_data_args(p)
    _add_length_args(p)
    _add_optim_args(p)
    _add_objective_args(p)
    _add_checkpoint_args(p)
    p.set_defaults(run=run)


def _add_data_args(p) -> None:
    """The "data and model" flags."""
    g = p.add_argument_group("data and model")
    g.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="folder or .zip of images (optional with --resume: the run's own data path is reused)",
    )
    g.add_argument("--out", required=True, type=Path, metavar="DIR", help="run folder (created)")
    g.add_argument(
        "--config",
        choices=("tiny", "cpu64", "celeba64"),
        default=None,
        help="UNet size: celeba64 (17.3 M parameters, default), cpu64 (10.1 M, sized for CPU training) or tiny (tests)",
    )
    g.add_argument("--resolution", type=ranged(int, 8, 1024), default=None, help="image side (default 64)")
    g.add_argument(
        "--fit",
        choices=("crop", "stretch"),
        default=None,
        help="non-square images: stretch = whole frame (default, as odedit restore), crop = central square",
    )
    g.add_argument(
        "--no-flip", dest="flip", action="store_const", const=False, default=None, help="no random horizontal flips"
    )
    g.add_argument("--workers", type=ranged(int, 1, 64), default=None, help="image decoding threads (default 4)")


def _add_length_args(p) -> None:
    """The "length and batch" flags."""
    g = p.add_argument_group("length and batch")
    g.add_argument("--steps", type=ranged(int, 0), default=None, help="total optimizer steps")
    g.add_argument(
        "--minutes",
        type=ranged(float, 0.0, lo_open=True),
        default=None,
        help="stop after this much wall time (from start-up), then checkpoint and export",
    )
    g.add_argument("--batch-size", type=ranged(int, 1), default=None, help="images per process and micro-batch (default 64)")
    g.add_argument("--grad-accum", type=ranged(int, 1), default=None, metavar="N", help="micro-batches per step (default 1)")


def _add_optim_args(p) -> None:
    """The "optimisation" flags."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=ranged(float, 0.0, lo_open=True), default=None, help="AdamW learning rate (default 1e-3)")
    g.add_argument("--warmup-steps", type=ranged(int, 0), default=None, help="linear LR warm-up (default 500)")
    g.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine", "linear"),
        default=None,
        help="after warm-up (default constant, as in DDPM); cosine/linear decay to 0 at --steps",
    )
    g.add_argument(
        "--decay-steps",
        type=ranged(int, 1),
        default=None,
        metavar="N",
        help="decay only over the last N steps before --steps (default: all after warm-up); with --resume "
        "and a larger --steps, a cool-down of a constant-lr run",
    )
    g.add_argument("--weight-decay", type=ranged(float, 0.0), default=None, help="AdamW weight decay (default 0)")
    g.add_argument(
        "--max-grad-norm", type=ranged(float, 0.0), default=None, help="gradient clipping, 0 = off (default 1)"
    )
    g.add_argument(
        "--ema-decay",
        type=ranged(float, 0.0, 1.0),
        default=None,
        help="EMA decay cap; warm-up min(decay, (1+n)/(10+n)) (default 0.9999)",
    )
    g.add_argument(
        "--ema-power",
        type=ranged(float, 0.0, 1.0, lo_open=True),
        default=None,
        metavar="P",
        help="EMA warm-up 1-(1+n)^-P instead of (1+n)/(10+n), e.g. 0.6667 for short runs",
    )
    g.add_argument(
        "--mixed-precision",
        choices=("auto", "no", "bf16", "fp16"),
        default=None,
        help="default auto: bf16 autocast on CPUs with bf16 hardware (AMX/AVX512-BF16) and bf16-capable GPUs, "
        "else fp32 (bf16 is emulated and far slower on other CPUs)",
    )
    g.add_argument(
        "--no-tf32", dest="tf32", action="store_const", const=False, default=None,
        help="CUDA fp32: no TF32 matmuls/convolutions (TF32 is on by default)",
    )
    g.add_argument("--compile", action="store_const", const=True, default=None, help="torch.compile the UNet (GPU; slow start)")
    g.add_argument("--seed", type=int, default=None, help="seed of initialisation, data order, noise (default 0)")
    g.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")


def _add_objective_args(p) -> None:
    """The denoiser's form and its loss: the Gaussian base, preconditioning, levels and weights."""
    g = p.add_argument_group("objective")
    g.add_argument(
        "--min-snr-gamma",
        type=ranged(float, 0.0, lo_open=True),
        default=None,
        metavar="G",
        help="min-SNR-G loss weighting (Hang et al. 2023), e.g. 5; default: uniform (DDPM simple loss)",
    )
    g.add_argument(
        "--gaussian-rank",
        type=ranged(int, 0, 4096),
        default=None,
        metavar="K",
        help=f"train the network as a residual on a closed-form Gaussian of the training faces (PPCA: mean, "
        f"top-K principal directions, one variance for the rest; fitted at the start, saved in the model "
        f"folder's gaussian/); 0 = a plain eps network (default {DEFAULT_GAUSSIAN_RANK})",
    )
    g.add_argument(
        "--precondition",
        choices=("none", "edm"),
        default=None,
        help="edm: EDM-style input/output scaling around the Gaussian base, its loss weighting and log-normal "
        "noise levels (Karras et al. 2022; with --gaussian-rank 0, around N(0, sigma_data^2 I) as in EDM). "
        "Default: edm for a new base, none with --gaussian-rank 0 or --min-snr-gamma; a resumed run or a "
        "warm start from a model with a base keeps that base's",
    )
    g.add_argument(
        "--noise-levels",
        choices=("uniform", "lognormal"),
        default=None,
        help="how training draws noise levels: uniform over t (DDPM) or EDM's log-normal sigma on the grid "
        "(default: lognormal with --precondition edm, else uniform)",
    )
    g.add_argument(
        "--sigma-data",
        type=ranged(float, 0.0, lo_open=True),
        default=None,
        help="the data's standard deviation for --precondition edm without a Gaussian base (default 0.5)",
    )


def _add_checkpoint_args(p) -> None:
    """The "checkpoints and outputs" flags."""
    g = p.add_argument_group("checkpoints and outputs")
    g.add_argument(
        "--checkpoint-every", type=ranged(int, 0), default=None, metavar="STEPS", help="0 = off (default 5000)"
    )
    g.add_argument(
        "--checkpoint-minutes", type=ranged(float, 0.0), default=None, metavar="M", help="0 = off (default 30)"
    )
    g.add_argument("--keep-checkpoints", type=ranged(int, 1), default=None, help="newest checkpoints kept (default 2)")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    g.add_argument(
        "--resume-from-weights",
        default=None,
        metavar="DIR",
        help="start from a save_pretrained model folder (e.g. OUT/model) with a fresh optimizer",
    )
    g.add_argument("--export-fp16", action="store_const", const=True, default=None, help="write OUT/model in float16 (half the size)")
    g.add_argument("--export-raw", action="store_const", const=True, default=None, help="also write the raw (non-EMA) weights to OUT/model_raw")
    g.add_argument(
        "--sample-every", type=ranged(int, 0), default=None, metavar="STEPS", help="sample grid period, 0 = off (default 1000)"
    )
    g.add_argument("--sample-steps", type=ranged(int, 1, 1000), default=None, help="DDIM steps of the grids (default 50)")
    g.add_argument("--num-samples", type=ranged(int, 1, 256), default=None, help="images per grid (default 16)")
    g.add_argument("--log-every", type=ranged(int, 1), default=None, metavar="STEPS", help="log.jsonl period (default 10)")
    g.add_argument("--quiet", action="store_true", help="no progress bar or messages")


# The rank of the Gaussian base of a new run (docs/training.md: the rank study).
DEFAULT_GAUSSIAN_RANK = 512

# Settings a resumed run takes from its train_config.json unless given again on the command line.
INHERITED = (
    "data", "config", "resolution", "fit", "flip", "workers", "steps", "minutes", "batch_size", "grad_accum",
    "lr", "warmup_steps", "lr_schedule", "decay_steps", "weight_decay", "max_grad_norm", "ema_decay", "ema_power",
    "min_snr_gamma", "gaussian_rank", "precondition", "sigma_data", "noise_levels", "mixed_precision", "tf32",
    "compile", "seed", "checkpoint_every", "checkpoint_minutes", "keep_checkpoints", "export_fp16",
    "export_raw", "sample_every", "sample_steps", "num_samples", "log_every",
)  # fmt: skip


def resolve_settings(args) -> dict:
    """TrainConfig keyword arguments: flags given > the resumed run's saved settings > defaults.

    With --resume, every flag not given again keeps the value the run was started with
    (learning rate, batch, seed, ...), so ``odedit train --out DIR --resume`` continues
    the same run. --steps/--minutes are inherited only when neither is given, --decay-steps only
    when --lr-schedule is not given again. The global batch is kept: resumed with another number
    of processes, the per-process batch is the saved global batch split over them.
    """
    import json

    explicit = {k: getattr(args, k) for k in INHERITED if getattr(args, k) is not None}
    saved: dict = {}
    path = Path(args.out) / "train_config.json"
    if args.resume and path.is_file():
        try:
            saved_all = json.loads(path.read_text())
            saved, resolved = saved_all["config"], saved_all.get("resolved") or {}
            if not isinstance(saved, dict) or not isinstance(resolved, dict):
                raise TypeError("'config' and 'resolved' must be objects")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise CLIError(f"cannot read {path} to resume: {err}") from None
        saved = {k: v for k, v in saved.items() if k in INHERITED and v is not None}
        if "steps" in explicit or "minutes" in explicit:
            saved.pop("steps", None)
            saved.pop("minutes", None)
        if "lr_schedule" in explicit:  # a new schedule: the saved decay window was the old one's
            saved.pop("decay_steps", None)
        if "batch_size" not in explicit and "batch_size" in saved:
            saved["batch_size"] = _per_process_batch(saved, explicit, resolved)
    return {**saved, **explicit}


def _per_process_batch(saved: dict, explicit: dict, resolved: dict) -> int:
    """The per-process batch of a resumed run when --batch-size is not given again: the saved one,
    or, when the run is resumed with another number of processes (``WORLD_SIZE``, set by torchrun /
    accelerate launch), the saved global batch split over the processes and micro-batches (refused
    when it does not split). With the same processes, a new --grad-accum multiplies the batch."""
    from odedit.devices import launched_processes

    try:
        world = launched_processes()
    except ValueError as err:
        raise CLIError(str(err)) from None
    accum = explicit.get("grad_accum", saved.get("grad_accum", 1))
    global_batch, before = resolved.get("global_batch"), resolved.get("processes")
    if not isinstance(global_batch, int) or not isinstance(before, int) or before == world:
        return saved["batch_size"]
    if global_batch % (accum * world):
        raise CLIError(
            f"the run's global batch of {global_batch} does not split over {world} process(es) x {accum} "
            "micro-batch(es); give --batch-size (per process) again"
        )
    return global_batch // (accum * world)


def run(args) -> int:
    from odedit.data import DatasetError
    from odedit.training import TrainConfig, TrainError, train

    # --precondition unset: a new base gets "edm", a resumed or warm-started base keeps its own
    # (odedit.training.base.new_base_precondition / resolve_gaussian_base).
    try:
        cfg = TrainConfig(
            out=str(args.out),
            resume=args.resume,
            resume_from_weights=args.resume_from_weights,
            cpu=args.cpu,
            progress=not args.quiet,
            **{"mixed_precision": "auto", "gaussian_rank": DEFAULT_GAUSSIAN_RANK, **resolve_settings(args)},
        )
    except TypeError as err:  # pragma: no cover - a saved config from another version
        raise CLIError(f"incompatible saved settings: {err}") from None
    log = (lambda msg: None) if args.quiet else None
    try:
        result = train(cfg, log=log)
    except (TrainError, DatasetError) as err:
        raise CLIError(str(err)) from None
    except OSError as err:
        raise CLIError(f"{err.strerror or err}: {err.filename or ''}".rstrip(": ")) from None
    if result.model_dir is not None and not args.quiet:
        print(result.model_dir)
    return 0
