"""Training an eps-prediction DDPM face prior (the ODEdit paper's setting).

Objective (Ho et al. 2020, "simple" loss): for an image x0 in [-1, 1], a uniform
timestep t in 0..T-1 and eps ~ N(0, I),

    x_t = sqrt(alpha_bar[t]) x0 + sqrt(1 - alpha_bar[t]) eps,   loss = || eps - eps_theta(x_t, t) ||^2

with the linear beta schedule 1e-4..0.02 over T = 1000 steps
(:data:`odedit.unets.DEFAULT_SCHEDULER_CONFIG`) and a diffusers ``UNet2DModel``
(:data:`odedit.unets.UNET_CONFIGS`).

Machinery: ``accelerate`` (one process, or several with ``accelerate launch``;
``--mixed-precision``, gradient accumulation), AdamW with linear warm-up, an EMA of
the weights (``diffusers.training_utils.EMAModel``), atomic checkpoints that resume
bit-exactly, a JSONL loss log, sample grids, and the final export of the EMA weights
as a ``save_pretrained`` folder that :func:`odedit.models.load_model` reads.

Reproducibility: every random draw of the loop is a pure function of
``(seed, process rank, optimizer step, micro-batch)``: the batch order and flips come
from :class:`odedit.data.EpochStream`, and the noise and timesteps from a generator
re-seeded each micro-batch. A run resumed from a checkpoint therefore continues
exactly like an uninterrupted one (same batches, same noise), without any sampler or
RNG state in the checkpoint. The learning rate is a pure function of the step too.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from odedit.data import EpochStream, ImageArrayDataset, batch_to_model_space, load_dataset, mix_seed
from odedit.schedule import NoiseSchedule
from odedit.unets import DEFAULT_SCHEDULER_CONFIG, UNET_CONFIGS, build_unet, save_model

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainError",
    "train",
    "lr_at",
    "denoising_loss",
    "latest_checkpoint",
    "list_checkpoints",
    "MIXED_PRECISION",
    "LR_SCHEDULES",
]

MIXED_PRECISION = ("no", "bf16", "fp16", "auto")  # auto: odedit.devices.auto_mixed_precision
LR_SCHEDULES = ("constant", "cosine", "linear")
CHECKPOINTS = "checkpoints"
TRAIN_CONFIG = "train_config.json"
LOG_FILE = "log.jsonl"
TRAINER_STATE = "trainer_state.json"
TRAIN_INFO = "odedit_train.json"
# Keep the decoded dataset on the accelerator when it is at most this big (CelebA-64: 297 MB).
DATA_ON_DEVICE_MAX_BYTES = 4 << 30
# With several processes, wall-clock and signal decisions are agreed on every this many steps.
SYNC_EVERY = 10


class TrainError(ValueError):
    """Training cannot start or continue as asked; the message says why."""


@dataclass
class TrainConfig:
    """Every setting of a training run (the CLI flags of ``odedit train``).

    ``config``/``resolution`` None mean: from the checkpoint when resuming, from the
    weights with ``resume_from_weights``, else ``celeba64`` at 64.
    """

    data: Optional[str] = None
    out: str = "runs/celeba64"
    config: Optional[str] = None
    resolution: Optional[int] = None
    fit: str = "stretch"  # same default as `odedit restore --fit`
    flip: bool = True
    batch_size: int = 64
    grad_accum: int = 1
    steps: Optional[int] = None
    minutes: Optional[float] = None
    lr: float = 2e-4
    warmup_steps: int = 500
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    ema_decay: float = 0.9999
    # None: diffusers' default warm-up min(decay, (1+n)/(10+n)); a value p: the EMA warm-up
    # 1 - (1+n)^-p (use_ema_warmup; Karras et al.), which suits short runs (p = 2/3: the EMA
    # averages over ~n^(2/3) recent steps, ~300 at n = 5,000).
    ema_power: Optional[float] = None
    # None: the "simple" loss (uniform over t). A value g: min-SNR-g weighting (Hang et al.
    # 2023) of the eps loss, w(t) = min(SNR(t), g) / SNR(t).
    min_snr_gamma: Optional[float] = None
    mixed_precision: str = "no"
    tf32: bool = True  # CUDA only: TF32 matmuls/convs in fp32 training (Ampere and newer)
    compile: bool = False
    seed: int = 0
    workers: int = 4
    checkpoint_every: int = 5000
    checkpoint_minutes: float = 30.0
    keep_checkpoints: int = 2
    resume: bool = False
    resume_from_weights: Optional[str] = None
    export_fp16: bool = False
    export_raw: bool = False
    sample_every: int = 1000
    sample_steps: int = 50
    num_samples: int = 16
    log_every: int = 10
    cpu: bool = False
    progress: bool = True

    def validate(self) -> None:
        if self.steps is None and self.minutes is None:
            raise TrainError("say how long to train: pass --steps N and/or --minutes M")
        if self.steps is not None and self.steps < 0:
            raise TrainError(f"steps must be >= 0, got {self.steps}")
        if self.minutes is not None and self.minutes <= 0:
            raise TrainError(f"minutes must be > 0, got {self.minutes}")
        if self.config is not None and self.config not in UNET_CONFIGS:
            raise TrainError(f"unknown model config {self.config!r}; expected one of {', '.join(UNET_CONFIGS)}")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise TrainError(f"resolution must be a multiple of 8 and >= 8, got {self.resolution}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise TrainError(f"mixed precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise TrainError(f"lr schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.lr_schedule != "constant" and self.steps is None:
            raise TrainError(f"--lr-schedule {self.lr_schedule} decays to 0 at --steps: pass --steps")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise TrainError(f"EMA decay must be in [0, 1], got {self.ema_decay}")
        if self.ema_power is not None and not 0.0 < self.ema_power <= 1.0:
            raise TrainError(f"EMA warm-up power must be in (0, 1], got {self.ema_power}")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0.0:
            raise TrainError(f"min-SNR gamma must be > 0, got {self.min_snr_gamma}")
        for name in ("batch_size", "grad_accum", "sample_steps", "num_samples", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise TrainError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.resume and self.resume_from_weights:
            raise TrainError("--resume and --resume-from-weights exclude each other")


@dataclass
class TrainResult:
    """What a call of :func:`train` did."""

    step: int  # optimizer steps done in total (all invocations)
    start_step: int  # the step this invocation started at (0, or the resumed step)
    images_seen: int  # training images drawn in total (all processes, all invocations)
    stopped_by: str  # "steps" | "minutes" | "signal"
    elapsed_s: float  # wall time of this invocation
    images_per_s: float  # training throughput of this invocation's loop (all processes)
    model_dir: Optional[Path]  # the exported EMA model (None on non-main processes)
    checkpoint: Optional[Path]  # the last checkpoint written or resumed from
    records: list = field(default_factory=list)  # the log.jsonl records written by this call


class _TrainerState:
    """Loop counters saved in checkpoints (accelerate custom checkpoint object)."""

    def __init__(self) -> None:
        self.step = 0
        self.images_seen = 0
        self.train_seconds = 0.0
        self.loss_ema = None  # smoothed training loss (see _log)

    def state_dict(self) -> dict:
        return dict(
            step=self.step, images_seen=self.images_seen, train_seconds=self.train_seconds, loss_ema=self.loss_ema
        )

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.images_seen = int(state["images_seen"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.loss_ema = state.get("loss_ema")


# ---- pure helpers ---------------------------------------------------------------------------


def lr_at(step: int, lr: float, warmup_steps: int, schedule: str = "constant", total_steps: Optional[int] = None) -> float:
    """Learning rate of the update made at optimizer step ``step`` (0-based).

    Linear warm-up from lr/warmup to lr over ``warmup_steps`` updates, then constant,
    or a cosine / linear decay to 0 at ``total_steps``.
    """
    scale = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule != "constant":
        if total_steps is None:
            raise ValueError(f"the {schedule} schedule needs total_steps")
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, max(0.0, (step - warmup_steps) / span))
        scale *= 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return lr * scale


def min_snr_weights(schedule: NoiseSchedule, gamma: float) -> torch.Tensor:
    """min-SNR-gamma loss weights of the eps objective (Hang et al. 2023, eq. for eps-prediction).

    SNR(t) = alpha_bar / (1 - alpha_bar); w(t) = min(SNR(t), gamma) / SNR(t), shape (T,),
    float32, in (0, 1]: the low-noise steps (SNR > gamma) are weighted down.
    """
    ab = schedule.alpha_bar
    snr = ab / (1.0 - ab)
    return (snr.clamp(max=float(gamma)) / snr).float()


def weighted_eps_loss(pred: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, weights: Optional[torch.Tensor]):
    """Mean squared eps error, per-sample weighted by ``weights[t]`` (None: plain MSE)."""
    if weights is None:
        return F.mse_loss(pred.float(), noise)
    per_sample = (pred.float() - noise).square().flatten(1).mean(1)
    return (weights[t] * per_sample).mean()


def _noise_tables(schedule: NoiseSchedule, device) -> tuple[torch.Tensor, torch.Tensor]:
    ab = schedule.alpha_bar
    return ab.sqrt().float().to(device), (1.0 - ab).sqrt().float().to(device)


def _noisy(x0, t, noise, tables):
    sqrt_ab, sqrt_1mab = tables
    return sqrt_ab[t].view(-1, 1, 1, 1) * x0 + sqrt_1mab[t].view(-1, 1, 1, 1) * noise


@torch.no_grad()
def denoising_loss(unet, x0: torch.Tensor, schedule: NoiseSchedule, seed: int = 0) -> float:
    """A deterministic estimate of the training loss on a batch (for evaluation).

    Timesteps are spread evenly over 0..T-1 across the batch and the noise comes
    from ``seed``, so two models (e.g. before and after training) are compared on
    exactly the same problems. ``x0`` is (B, 3, H, W) in [-1, 1].
    """
    device = next(unet.parameters()).device
    B = x0.shape[0]
    T = schedule.num_train_timesteps
    t = torch.linspace(0, T - 1, B).round().long().to(device)
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(x0.shape, generator=gen).to(device)
    x0 = x0.to(device, torch.float32)
    pred = unet(_noisy(x0, t, noise, _noise_tables(schedule, device)), t, return_dict=False)[0]
    return float(F.mse_loss(pred.float(), noise))


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


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` to ``dst``, replacing an existing ``dst`` (two renames)."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def export_model(unet, target: Path, scheduler_config: dict, fp16: bool = False, info: Optional[dict] = None) -> Path:
    """Write a ``save_pretrained`` model folder (+ ``odedit_train.json``, ``checksums.json``) atomically.

    The folder is built complete under a temporary name and renamed into place.
    """
    from odedit.models import write_checksums

    target = Path(target)
    staging = target.with_name(f".{target.name}.staging-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    try:
        save_model(unet, staging, scheduler_config, fp16=fp16)
        if info is not None:
            (staging / TRAIN_INFO).write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
        write_checksums(staging)
        _replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


class _StopFlag:
    """SIGINT/SIGTERM -> finish the current step, checkpoint, export, exit. A second SIGINT aborts."""

    def __init__(self, say: Callable[[str], None]):
        self.set = False
        self._say = say
        self._old: dict = {}

    def _handler(self, signum, frame):
        if self.set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.set = True
        self._say(
            f"received {signal.Signals(signum).name}: stopping after this step (checkpoint + export); "
            "press Ctrl-C again to abort without saving"
        )

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._old[sig] = signal.signal(sig, self._handler)
                except (ValueError, OSError):  # pragma: no cover - exotic embeddings
                    pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


# ---- the training run -----------------------------------------------------------------------


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _load_weights(path: str):
    """(UNet2DModel in train mode, scheduler config) from a local save_pretrained folder."""
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
    return model.unet.requires_grad_(True).train(), sched_cfg


def train(cfg: TrainConfig, log: Optional[Callable[[str], None]] = None) -> TrainResult:
    """Run (or resume) a training run as configured; see the module docstring.

    Args:
        cfg: the settings; ``cfg.data`` may be None when resuming (the saved one is used).
        log: where progress messages go (main process only; default: stderr).
    Raises:
        TrainError, odedit.data.DatasetError: the run cannot start as configured.
    """
    try:
        return _train(cfg, log)
    finally:
        # accelerate keeps process-global state; clear it (not the process group) so a
        # later train() in the same process may use other settings (tests, notebooks).
        try:
            from accelerate.state import AcceleratorState, GradientState

            AcceleratorState._reset_state()
            GradientState._reset_state()
        except Exception:  # pragma: no cover - private API moved
            pass


def _train(cfg: TrainConfig, log: Optional[Callable[[str], None]]) -> TrainResult:
    import diffusers
    from accelerate import Accelerator
    from accelerate.utils import broadcast, set_seed
    from diffusers import UNet2DModel
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from odedit.devices import auto_mixed_precision, cpu_has_fast_bf16
    from odedit.imageio import save_png_atomic
    from odedit.models import UNetEps
    from odedit.sampling import ddim_sample, grid_image
    from odedit.rng import generators_for

    t_begin = time.monotonic()
    cfg.validate()
    out = Path(cfg.out).expanduser()
    on_cpu = cfg.cpu or not torch.cuda.is_available()
    mixed_precision = auto_mixed_precision(on_cpu) if cfg.mixed_precision == "auto" else cfg.mixed_precision
    try:
        accelerator = Accelerator(
            mixed_precision=mixed_precision, gradient_accumulation_steps=cfg.grad_accum, cpu=cfg.cpu
        )
    except (ValueError, RuntimeError) as err:
        raise TrainError(f"cannot set up accelerate with --mixed-precision {mixed_precision}: {err}") from None
    if device_is_cuda(accelerator.device):
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv kernels once
    main = accelerator.is_main_process
    if main and mixed_precision == "bf16" and accelerator.device.type == "cpu" and not cpu_has_fast_bf16():
        print(
            "warning: this CPU has no bf16 hardware (AMX-BF16/AVX512-BF16); bf16 autocast is emulated and "
            "far slower than fp32 here (use --mixed-precision auto or no)",
            file=sys.stderr,
            flush=True,
        )
    rank, world = accelerator.process_index, accelerator.num_processes
    device = accelerator.device
    bar_holder: list = []

    def say(msg: str) -> None:
        if not main:
            return
        if log is not None:
            log(msg)
        elif bar_holder and not bar_holder[0].disable:
            bar_holder[0].write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    # 1. Where are we: fresh, resumed, or from weights.
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {str(out)!r} exists and is not a directory")
    ckpt = latest_checkpoint(out)
    saved = _read_json(out / TRAIN_CONFIG) if ckpt else None
    if ckpt is not None and not cfg.resume:
        raise TrainError(
            f"{out} already holds checkpoints (latest {ckpt.name}); pass --resume to continue that run "
            "or choose another --out"
        )
    if ckpt is not None and saved is None:
        raise TrainError(f"cannot resume: {out / TRAIN_CONFIG} is missing or unreadable")
    if cfg.resume and ckpt is None:
        say(f"--resume: no checkpoint in {out}; starting a new run")
    data_path = cfg.data
    if data_path is None:
        if saved is None:
            raise TrainError("pass the training data with --data PATH (a folder or .zip of images)")
        data_path = saved["config"]["data"]

    set_seed(cfg.seed)  # model initialisation
    if saved is not None:
        res = saved["resolved"]
        for key, mine in (("config", cfg.config), ("resolution", cfg.resolution)):
            if mine is not None and mine != res[key]:
                raise TrainError(
                    f"--{key} {mine} differs from the run being resumed ({res[key]}); use another --out to change it"
                )
        unet = UNet2DModel.from_config(res["unet_config"])
        scheduler_config = res["scheduler_config"]
        config_name, resolution = res["config"], int(res["resolution"])
    elif cfg.resume_from_weights:
        unet, scheduler_config = _load_weights(cfg.resume_from_weights)
        size = unet.config.sample_size
        resolution = int(size[0] if isinstance(size, (list, tuple)) else size)
        if cfg.resolution is not None and cfg.resolution != resolution:
            raise TrainError(
                f"--resolution {cfg.resolution} differs from the weights' sample size {resolution}"
            )
        config_name = cfg.config or "from-weights"
        if cfg.config is not None:
            say(f"note: --config {cfg.config} ignored: the architecture comes from {cfg.resume_from_weights}")
    else:
        config_name, resolution = cfg.config or "celeba64", cfg.resolution or 64
        unet = build_unet(config_name, resolution)
        scheduler_config = dict(DEFAULT_SCHEDULER_CONFIG)
    schedule = NoiseSchedule.from_scheduler_config(scheduler_config)
    T = schedule.num_train_timesteps

    # 2. Data, decoded once into memory.
    dbar = tqdm(desc="decoding images", unit="img", disable=not (main and cfg.progress), file=sys.stderr)
    try:
        dataset: ImageArrayDataset = load_dataset(
            data_path, resolution, cfg.fit, workers=cfg.workers, progress=dbar.update
        )
    finally:
        dbar.close()
    if dataset.skipped:
        from odedit.data import examples

        say(f"skipped {len(dataset.skipped)} unreadable file(s), e.g. {examples(dataset.skipped)}")
    say(f"dataset: {len(dataset)} images at {resolution}x{resolution} from {data_path}")
    images = torch.from_numpy(dataset.images)
    if device.type != "cpu" and images.numel() <= DATA_ON_DEVICE_MAX_BYTES:
        images = images.to(device)
    stream = EpochStream(len(dataset), cfg.seed, cfg.flip)

    # 3. Model, optimizer, EMA, accelerate.
    unet.train()
    if cfg.compile:
        unet.compile()  # in place: parameter names and state_dict keys stay unchanged
    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=cfg.lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
    )
    model, optimizer = accelerator.prepare(unet, optimizer)
    raw = accelerator.unwrap_model(model)
    if cfg.ema_power is None:
        ema = EMAModel(raw.parameters(), decay=cfg.ema_decay, foreach=True)
    else:
        ema = EMAModel(
            raw.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=cfg.ema_power, foreach=True
        )
    state = _TrainerState()
    accelerator.register_for_checkpointing(ema, state)
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        ema.to(device)  # accelerate loads custom objects onto the CPU
        ema.decay = cfg.ema_decay  # the flags win over the saved values (recorded as given)
        ema.use_ema_warmup = cfg.ema_power is not None
        if cfg.ema_power is not None:
            ema.power, ema.inv_gamma = cfg.ema_power, 1.0
        say(f"resumed {ckpt} at step {state.step} ({state.images_seen} images seen)")
    start_step = state.step
    tables = _noise_tables(schedule, device)
    loss_weights = None if cfg.min_snr_gamma is None else min_snr_weights(schedule, cfg.min_snr_gamma).to(device)
    gen = torch.Generator(device=device)
    B, A = cfg.batch_size, cfg.grad_accum
    global_batch = B * A * world
    n_params = sum(p.numel() for p in raw.parameters())

    # 4. Run folder: resolved config, log (truncated to the resumed step), samples.
    resolved = dict(
        config=config_name,
        resolution=resolution,
        mixed_precision=mixed_precision,
        unet_config=dict(raw.config),
        scheduler_config=scheduler_config,
        parameters=n_params,
        dataset=dataset.summary(),
        processes=world,
        device=str(device),
        per_process_batch=B,
        global_batch=global_batch,
        data_on_device=images.device.type != "cpu",
        versions=dict(torch=torch.__version__, diffusers=diffusers.__version__, accelerate=_version("accelerate")),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        resumed_from=str(ckpt) if ckpt else None,
        start_step=start_step,
    )
    cfg_dict = asdict(cfg)
    cfg_dict["data"] = str(Path(data_path).expanduser().resolve())  # absolute: --resume may run elsewhere
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "samples").mkdir(exist_ok=True)
        _write_json_atomic(out / TRAIN_CONFIG, {"config": cfg_dict, "resolved": resolved})
        _truncate_log(out / LOG_FILE, start_step if ckpt else 0)
    accelerator.wait_for_everyone()
    say(
        f"model {config_name} ({n_params / 1e6:.2f} M parameters) at {resolution}px on {device} x{world}, "
        f"batch {B} x accum {A} x {world} process(es) = {global_batch} images per step, "
        f"mixed precision {mixed_precision}"
    )

    ema_unet = None  # the EMA weights as a network, for samples and export (main only)

    def ema_network():
        nonlocal ema_unet
        if ema_unet is None:
            ema_unet = UNet2DModel.from_config(raw.config).to(device).eval().requires_grad_(False)
        ema.copy_to(ema_unet.parameters())
        return ema_unet

    def write_samples(step: int) -> None:
        net = ema_network()
        gens = generators_for([mix_seed(cfg.seed, 0x5A3E, i) for i in range(cfg.num_samples)], "cpu")
        with torch.no_grad():
            x = ddim_sample(UNetEps(net, schedule), gens, steps=cfg.sample_steps, batch_size=64)
        save_png_atomic(out / "samples" / f"step_{step:06d}.png", grid_image(x))

    def info(step: int) -> dict:
        return dict(
            step=step,
            images_seen=state.images_seen,
            config=config_name,
            resolution=resolution,
            ema_decay=cfg.ema_decay,
            ema_power=cfg.ema_power,
            min_snr_gamma=cfg.min_snr_gamma,
            weights="ema",
            data=str(data_path),
            train_seconds=round(state.train_seconds, 1),
        )

    def export(step: int) -> Path:
        target = export_model(ema_network(), out / "model", scheduler_config, cfg.export_fp16, info(step))
        if cfg.export_raw:
            export_model(raw, out / "model_raw", scheduler_config, cfg.export_fp16, dict(info(step), weights="raw"))
        return target

    last_ckpt = ckpt

    def checkpoint(step: int) -> Path:
        root = out / CHECKPOINTS
        final = root / f"step_{step:07d}"
        tmp = root / f".tmp-step_{step:07d}"
        if main:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if main:
            _write_json_atomic(tmp / TRAINER_STATE, dict(state.state_dict(), saved_at=time.strftime("%Y-%m-%dT%H:%M:%S")))
            _replace_dir(tmp, final)
            for old in list_checkpoints(out)[: -cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
            export(step)  # a usable model folder at every checkpoint
        accelerator.wait_for_everyone()
        return final

    # 5. The loop.
    records: list = []
    bar = tqdm(
        total=cfg.steps,
        initial=start_step,
        desc="training",
        unit="step",
        disable=not (main and cfg.progress),
        file=sys.stderr,
        dynamic_ncols=True,
    )
    bar_holder.append(bar)
    step = start_step
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    base_seconds = state.train_seconds
    t_loop = time.monotonic()
    paused = 0.0  # seconds spent in checkpoints and sample grids (not training)
    t_log, step_log = t_loop, step
    t_ckpt = t_loop
    last_sample = None
    stopped_by = "steps"
    deadline = None if cfg.minutes is None else t_begin + cfg.minutes * 60.0

    def train_seconds_now() -> float:
        return base_seconds + (time.monotonic() - t_loop - paused)

    def pause(fn, *args):
        """Run fn (a checkpoint or sample grid) without counting it as training time."""
        nonlocal paused, t_log
        t0 = time.monotonic()
        try:
            return fn(*args)
        finally:
            dt = time.monotonic() - t0
            paused += dt
            t_log += dt

    def write_log() -> None:
        nonlocal t_log, step_log, loss_count
        now = time.monotonic()
        mean = accelerator.reduce(loss_sum / max(1, loss_count), reduction="mean").item()
        loss_sum.zero_()
        loss_count = 0
        # Smoothed training loss: an EMA of the logged means with a ~100-step time constant.
        a = math.exp(-(step - step_log) / 100.0)
        state.loss_ema = mean if state.loss_ema is None else a * state.loss_ema + (1 - a) * mean
        ips = (step - step_log) * global_batch / max(now - t_log, 1e-9)
        rec = dict(
            step=step,
            loss=round(mean, 6),
            loss_ema=round(state.loss_ema, 6),
            lr=lr_at(step - 1, cfg.lr, cfg.warmup_steps, cfg.lr_schedule, cfg.steps),
            images_per_s=round(ips, 2),
            elapsed_s=round(train_seconds_now(), 2),
        )
        t_log, step_log = now, step
        records.append(rec)
        if main:
            with open(out / LOG_FILE, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{mean:.4f}", ema=f"{state.loss_ema:.4f}", img_s=f"{ips:.1f}", refresh=False)

    def save_checkpoint() -> Path:
        state.train_seconds = train_seconds_now()
        return pause(checkpoint, step)

    with _StopFlag(say) as stop_flag:
        while True:
            if cfg.steps is not None and step >= cfg.steps:
                stopped_by = "steps"
                break
            now = time.monotonic()
            time_up = deadline is not None and now >= deadline
            ckpt_due = cfg.checkpoint_minutes > 0 and now - t_ckpt >= cfg.checkpoint_minutes * 60.0
            flags = [time_up, stop_flag.set, ckpt_due]
            if world > 1:  # every process must take the same decision at the same step
                if step % SYNC_EVERY == 0:
                    flags = broadcast(torch.tensor(flags, device=device, dtype=torch.int32)).bool().tolist()
                else:
                    flags = [False, False, False]
            if flags[0] or flags[1]:
                stopped_by = "minutes" if flags[0] else "signal"
                break
            if flags[2] and step != start_step:
                last_ckpt = save_checkpoint()
                t_ckpt = time.monotonic()

            lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.lr_schedule, cfg.steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for micro in range(A):
                k0 = ((step * A + micro) * world + rank) * B  # this process's slice of the global stream
                idx, flips = stream.take(k0, B)
                idx_t = torch.from_numpy(idx).to(images.device, non_blocking=True)
                flips_t = torch.from_numpy(flips).to(device, non_blocking=True)
                x0 = batch_to_model_space(images[idx_t].to(device, non_blocking=True), flips_t)
                gen.manual_seed(mix_seed(cfg.seed, 0x7015E, rank, step, micro))
                noise = torch.randn(x0.shape, generator=gen, device=device)
                t = torch.randint(0, T, (B,), generator=gen, device=device)
                with accelerator.accumulate(model):
                    pred = model(_noisy(x0, t, noise, tables), t, return_dict=False)[0]
                    loss = weighted_eps_loss(pred, noise, t, loss_weights)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                loss_sum += loss.detach()
                loss_count += 1
            ema.step(raw.parameters())
            step += 1
            state.step = step
            state.images_seen += global_batch
            bar.update(1)
            if step % cfg.log_every == 0:
                write_log()
            if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0:
                last_ckpt = save_checkpoint()
                t_ckpt = time.monotonic()
            if main and cfg.sample_every > 0 and step % cfg.sample_every == 0:
                pause(write_samples, step)
                last_sample = step

        # 6. The end: log, checkpoint, samples, export.
        run_seconds = train_seconds_now() - base_seconds
        if loss_count:
            write_log()
        bar.close()
        steps_done = step - start_step
        ips = steps_done * global_batch / max(run_seconds, 1e-9) if steps_done else 0.0
        if last_ckpt is None or last_ckpt.name != f"step_{step:07d}":
            last_ckpt = save_checkpoint()
        model_dir = None
        if main:
            if cfg.sample_every > 0 and last_sample != step and steps_done > 0:
                write_samples(step)
            model_dir = export(step)
            say(
                f"stopped by {stopped_by} at step {step} ({steps_done} steps this run, "
                f"{ips:.1f} images/s); EMA model -> {model_dir}"
            )
        accelerator.wait_for_everyone()
    return TrainResult(
        step=step,
        start_step=start_step,
        images_seen=state.images_seen,
        stopped_by=stopped_by,
        elapsed_s=time.monotonic() - t_begin,
        images_per_s=ips,
        model_dir=model_dir,
        checkpoint=last_ckpt,
        records=records,
    )


def device_is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
    os.replace(tmp, path)


def _version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # pragma: no cover
        return "unknown"
