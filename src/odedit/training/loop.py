"""The training run: set-up, resume, the step loop, checkpoints, sample grids and the final export.

Machinery: ``accelerate`` (one process, several GPUs with ``accelerate launch``, or one
process per CPU core under ``torchrun``, grouped over gloo; ``--mixed-precision``, gradient
accumulation), AdamW with linear warm-up, an EMA of
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

import importlib
import json
import math
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from odedit.atomic import write_json_atomic
from odedit.data import EpochStream, ImageArrayDataset, batch_to_model_space, load_dataset, mix_seed
from odedit.precond import lognormal_timesteps, ve_log_sigma
from odedit.schedule import NoiseSchedule
from odedit.training.checkpoints import (
    CHECKPOINTS,
    LOG_FILE,
    TRAIN_CONFIG,
    TRAINER_STATE,
    _load_weights,
    _read_json,
    _replace_dir,
    _truncate_log,
    export_model,
    latest_checkpoint,
    list_checkpoints,
)
from odedit.training.base import resolve_gaussian_base
from odedit.training.config import TrainConfig, TrainError, TrainResult
from odedit.training.losses import _noise_tables, _noisy, lr_at, min_snr_weights, model_eps, weighted_eps_loss
from odedit.unets import DEFAULT_SCHEDULER_CONFIG, build_unet

# Keep the decoded dataset on the accelerator when it is at most this big (CelebA-64: 297 MB).
DATA_ON_DEVICE_MAX_BYTES = 4 << 30
# With several processes, wall-clock and signal decisions are agreed on every this many steps on
# GPUs (each agreement waits for the device); every step on CPUs, where a step takes seconds and
# torchrun kills its workers 30 s after passing them a SIGTERM.
SYNC_EVERY = 10
# The heavy imports of a run, as (module, names): loaded by _import_dependencies before the
# run's clock starts, so that their seconds count neither against --minutes nor in elapsed_s.
# The helpers below import what they use locally (from the module cache by then).
_DEPENDENCIES = (
    ("diffusers", ()),
    ("accelerate", ("Accelerator",)),
    ("accelerate.utils", ("set_seed",)),
    ("diffusers", ("UNet2DModel",)),
    ("diffusers.training_utils", ("EMAModel",)),
    ("tqdm.auto", ("tqdm",)),
    ("odedit.devices", ("auto_mixed_precision", "cpu_has_fast_bf16")),
    ("odedit.imageio", ("save_png_atomic",)),
    ("odedit.models", ("UNetEps",)),
    ("odedit.sampling", ("ddim_sample", "grid_image")),
    ("odedit.rng", ("generators_for",)),
)


class _TrainerState:
    """Loop counters saved in checkpoints (accelerate custom checkpoint object)."""

    def __init__(self) -> None:
        self.step = 0
        self.images_seen = 0
        self.train_seconds = 0.0
        self.loss_ema = None  # smoothed training loss (see _Run.write_log)

    def state_dict(self) -> dict:
        return dict(
            step=self.step, images_seen=self.images_seen, train_seconds=self.train_seconds, loss_ema=self.loss_ema
        )

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.images_seen = int(state["images_seen"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.loss_ema = state.get("loss_ema")


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


def train(cfg: TrainConfig, log: Optional[Callable[[str], None]] = None) -> TrainResult:
    """Run (or resume) a training run as configured; see :mod:`odedit.training`.

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
    _import_dependencies()
    t_begin = time.monotonic()
    cfg.validate()
    out = Path(cfg.out).expanduser()
    accelerator, mixed_precision = _make_accelerator(cfg)
    main = accelerator.is_main_process
    bar_holder: list = []  # the progress bar, once there is one (say() writes through it)
    say = _messenger(main, log, bar_holder)

    # 1. Where are we: fresh, resumed, or from weights.
    ckpt, saved, data_path = _locate_run(cfg, out, say)
    unet, scheduler_config, config_name, resolution, weights_base = _initial_model(cfg, saved, say)
    schedule = NoiseSchedule.from_scheduler_config(scheduler_config)
    # 2. Data, decoded once into memory; the Gaussian base the network is a residual on (if any).
    dataset, images, stream = _load_images(cfg, data_path, resolution, main, accelerator.device, say)
    base = resolve_gaussian_base(cfg, out, saved is not None, weights_base, unet, dataset, main, say)
    # 3. Model, optimizer, EMA, accelerate.
    model, optimizer, raw, ema, state = _prepare_model(cfg, accelerator, unet)
    if ckpt is not None:
        _resume(cfg, accelerator, ckpt, ema, state, say)
    run = _Run(
        cfg=cfg,
        accelerator=accelerator,
        say=say,
        bar_holder=bar_holder,
        t_begin=t_begin,
        out=out,
        data_path=data_path,
        ckpt=ckpt,
        mixed_precision=mixed_precision,
        config_name=config_name,
        resolution=resolution,
        scheduler_config=scheduler_config,
        schedule=schedule,
        dataset=dataset,
        images=images,
        stream=stream,
        model=model,
        optimizer=optimizer,
        raw=raw,
        ema=ema,
        state=state,
        base=None if base is None else base.to(accelerator.device),
    )
    # 4. Run folder: resolved config, log (truncated to the resumed step), samples.
    run.write_run_folder()
    # 5. The loop; 6. the end.
    return run.loop()


def _import_dependencies() -> None:
    """Import the heavy modules of a run (:data:`_DEPENDENCIES`) now, as ``from module import name`` does."""
    for module, names in _DEPENDENCIES:
        mod = importlib.import_module(module)
        for name in names:
            getattr(mod, name)  # diffusers' lazy attributes load their code on access


def _make_accelerator(cfg: TrainConfig):
    """(the ``Accelerator``, the resolved mixed-precision mode); CUDA math flags set, bf16 warning given."""
    from accelerate import Accelerator

    from odedit.devices import (
        auto_mixed_precision,
        cpu_has_fast_bf16,
        launched_processes,
        needs_cpu_process_group,
        process_group_mismatch,
    )

    on_cpu = cfg.cpu or not torch.cuda.is_available()
    mixed_precision = auto_mixed_precision(on_cpu) if cfg.mixed_precision == "auto" else cfg.mixed_precision
    try:
        launched = launched_processes()
    except ValueError as err:
        raise TrainError(str(err)) from None
    # under `torchrun --nproc_per_node N` without CUDA (or another accelerator with its own
    # backend), ask for the CPU: accelerate forms a gloo group only then
    cpu = cfg.cpu or needs_cpu_process_group(launched)
    try:
        accelerator = Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=cfg.grad_accum, cpu=cpu)
    except (ValueError, RuntimeError) as err:
        raise TrainError(
            f"cannot set up accelerate (--mixed-precision {mixed_precision}, {launched} process(es)): {err}"
        ) from err
    mismatch = process_group_mismatch(
        launched, accelerator.num_processes, "each process would train alone and overwrite the others' checkpoints"
    )
    if mismatch:
        raise TrainError(mismatch)
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
    return accelerator, mixed_precision


def _messenger(main: bool, log: Optional[Callable[[str], None]], bar_holder: list) -> Callable[[str], None]:
    """say(msg): a progress message from the main process, to ``log``, through the bar, or to stderr."""

    def say(msg: str) -> None:
        if not main:
            return
        if log is not None:
            log(msg)
        elif bar_holder and not bar_holder[0].disable:
            bar_holder[0].write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    return say


def _locate_run(cfg: TrainConfig, out: Path, say: Callable[[str], None]):
    """(latest checkpoint to resume or None, the saved train_config.json or None, the data path)."""
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
    return ckpt, saved, data_path


def _initial_model(cfg: TrainConfig, saved: Optional[dict], say: Callable[[str], None]):
    """(UNet, scheduler config, config name, resolution): of the resumed run, the weights, or a new one."""
    from accelerate.utils import set_seed
    from diffusers import UNet2DModel

    set_seed(cfg.seed)  # model initialisation
    weights_base = None
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
        unet, scheduler_config, weights_base = _load_weights(cfg.resume_from_weights)
        size = unet.config.sample_size
        resolution = int(size[0] if isinstance(size, (list, tuple)) else size)
        if cfg.resolution is not None and cfg.resolution != resolution:
            # Progressive training (e.g. a 32 px start, then 64 px): the UNet is fully convolutional,
            # so the weights carry over; only the recorded sample size changes.
            say(f"note: the weights were trained at {resolution}px; continuing at {cfg.resolution}px")
            unet.register_to_config(sample_size=int(cfg.resolution))
            resolution = int(cfg.resolution)
        config_name = cfg.config or "from-weights"
        if cfg.config is not None:
            say(f"note: --config {cfg.config} ignored: the architecture comes from {cfg.resume_from_weights}")
    else:
        config_name, resolution = cfg.config or "celeba64", cfg.resolution or 64
        unet = build_unet(config_name, resolution)
        scheduler_config = dict(DEFAULT_SCHEDULER_CONFIG)
    return unet, scheduler_config, config_name, resolution, weights_base


def _load_images(cfg: TrainConfig, data_path: str, resolution: int, main: bool, device, say: Callable[[str], None]):
    """(dataset, its uint8 images as a tensor, on the device when small enough, the batch stream)."""
    from tqdm.auto import tqdm

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
    return dataset, images, stream


def _prepare_model(cfg: TrainConfig, accelerator, unet):
    """(prepared model, optimizer, the unwrapped network, its EMA, the loop counters), registered for checkpoints."""
    from diffusers.training_utils import EMAModel

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
    return model, optimizer, raw, ema, state


def _resume(cfg: TrainConfig, accelerator, ckpt: Path, ema, state: _TrainerState, say: Callable[[str], None]) -> None:
    """Load checkpoint ``ckpt`` (model, optimizer, EMA, counters); the EMA flags of ``cfg`` win."""
    accelerator.load_state(str(ckpt))
    ema.to(accelerator.device)  # accelerate loads custom objects onto the CPU
    ema.decay = cfg.ema_decay  # the flags win over the saved values (recorded as given)
    ema.use_ema_warmup = cfg.ema_power is not None
    if cfg.ema_power is not None:
        ema.power, ema.inv_gamma = cfg.ema_power, 1.0
    say(f"resumed {ckpt} at step {state.step} ({state.images_seen} images seen)")


@dataclass(eq=False)
class _Run:
    """One invocation of the loop: the prepared objects (fields), and the loop's own state."""

    cfg: TrainConfig
    accelerator: Any
    say: Callable[[str], None]
    bar_holder: list
    t_begin: float
    out: Path
    data_path: str
    ckpt: Optional[Path]  # the checkpoint resumed from
    mixed_precision: str
    config_name: str
    resolution: int
    scheduler_config: dict
    schedule: NoiseSchedule
    dataset: ImageArrayDataset
    images: torch.Tensor
    stream: EpochStream
    model: Any  # as prepared by accelerate
    optimizer: Any
    raw: Any  # the unwrapped UNet2DModel
    ema: Any
    state: _TrainerState
    base: Any = None  # the Gaussian base (odedit.gaussian.GaussianBase) on the device, or None
    ema_unet: Any = field(default=None, init=False)  # the EMA weights as a network (main only)

    def __post_init__(self) -> None:
        cfg, accelerator = self.cfg, self.accelerator
        self.main = accelerator.is_main_process
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.device = accelerator.device
        self.T = self.schedule.num_train_timesteps
        self.start_step = self.state.step
        self.tables = _noise_tables(self.schedule, self.device)
        ab = self.schedule.alpha_bar  # float64 (float32 on MPS, which has no float64): the Gaussian base's
        self.alpha_bar = (ab.float() if self.device.type == "mps" else ab).to(self.device)
        self.loss_weights = (
            None if cfg.min_snr_gamma is None else min_snr_weights(self.schedule, cfg.min_snr_gamma).to(self.device)
        )
        self.scales = self.log_sigma = None
        scales = None if self.base is None else self.base.scales(self.schedule.alpha_bar)
        if scales is not None and cfg.min_snr_gamma is not None:
            raise TrainError("the run's Gaussian base is preconditioned 'edm', which weights the loss itself: "
                             "drop --min-snr-gamma")
        if scales is not None:  # EDM preconditioning (odedit.precond): c_in, c_out per level, lambda = 1/c_out^2
            c_in, c_out = (c.float().to(self.device) for c in scales)
            self.scales = (c_in, c_out)
            self.loss_weights = 1.0 / c_out.square()
        edm = self.base is not None and self.base.precondition == "edm"
        self.noise_levels = cfg.noise_levels or ("lognormal" if edm else "uniform")
        if self.noise_levels == "lognormal":
            wide = torch.float32 if self.device.type == "mps" else torch.float64
            self.log_sigma = ve_log_sigma(self.schedule.alpha_bar).to(self.device, wide)
        self.gen = torch.Generator(device=self.device)
        self.B, self.A = cfg.batch_size, cfg.grad_accum
        self.global_batch = self.B * self.A * self.world
        self.n_params = sum(p.numel() for p in self.raw.parameters())
        self.last_ckpt = self.ckpt  # the last checkpoint written or resumed from

    # ---- the run folder, samples, export, checkpoints -------------------------------------

    def write_run_folder(self) -> None:
        """train_config.json (settings + resolved facts), the log truncated to the resumed step, samples/."""
        import diffusers

        cfg, out, ckpt = self.cfg, self.out, self.ckpt
        resolved = dict(
            config=self.config_name,
            resolution=self.resolution,
            mixed_precision=self.mixed_precision,
            unet_config=dict(self.raw.config),
            scheduler_config=self.scheduler_config,
            parameters=self.n_params,
            dataset=self.dataset.summary(),
            processes=self.world,
            device=str(self.device),
            per_process_batch=self.B,
            global_batch=self.global_batch,
            data_on_device=self.images.device.type != "cpu",
            versions=dict(torch=torch.__version__, diffusers=diffusers.__version__, accelerate=_version("accelerate")),
            started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            resumed_from=str(ckpt) if ckpt else None,
            start_step=self.start_step,
            # what precondition=None / noise_levels=None resolved to (the base decides them)
            precondition=None if self.base is None else self.base.precondition,
            noise_levels=self.noise_levels,
        )
        cfg_dict = asdict(cfg)
        cfg_dict["data"] = str(Path(self.data_path).expanduser().resolve())  # absolute: --resume may run elsewhere
        if self.main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "samples").mkdir(exist_ok=True)
            write_json_atomic(out / TRAIN_CONFIG, {"config": cfg_dict, "resolved": resolved})
            _truncate_log(out / LOG_FILE, self.start_step if ckpt else 0)
        self.accelerator.wait_for_everyone()
        self.say(
            f"model {self.config_name} ({self.n_params / 1e6:.2f} M parameters) at {self.resolution}px on "
            f"{self.device} x{self.world}, batch {self.B} x accum {self.A} x {self.world} process(es) = "
            f"{self.global_batch} images per step, mixed precision {self.mixed_precision}"
        )

    def ema_network(self):
        if self.ema_unet is None:
            from diffusers import UNet2DModel

            self.ema_unet = UNet2DModel.from_config(self.raw.config).to(self.device).eval().requires_grad_(False)
        self.ema.copy_to(self.ema_unet.parameters())
        return self.ema_unet

    def write_samples(self, step: int) -> None:
        from odedit.imageio import save_png_atomic
        from odedit.models import GaussianResidualEps, UNetEps
        from odedit.rng import generators_for
        from odedit.sampling import ddim_sample, grid_image

        cfg = self.cfg
        net = self.ema_network()
        gens = generators_for([mix_seed(cfg.seed, 0x5A3E, i) for i in range(cfg.num_samples)], "cpu")
        with torch.no_grad():
            model = UNetEps(net, self.schedule)
            if self.base is not None:
                model = GaussianResidualEps(model, self.base)
            x = ddim_sample(model, gens, steps=cfg.sample_steps, batch_size=64)
        save_png_atomic(self.out / "samples" / f"step_{step:06d}.png", grid_image(x))

    def info(self, step: int) -> dict:
        cfg = self.cfg
        return dict(
            step=step,
            images_seen=self.state.images_seen,
            config=self.config_name,
            resolution=self.resolution,
            ema_decay=cfg.ema_decay,
            ema_power=cfg.ema_power,
            min_snr_gamma=cfg.min_snr_gamma,
            gaussian_rank=0 if self.base is None else self.base.rank,
            precondition="none" if self.base is None else self.base.precondition,
            noise_levels=self.noise_levels,
            weights="ema",
            data=str(self.data_path),
            train_seconds=round(self.state.train_seconds, 1),
        )

    def export(self, step: int) -> Path:
        cfg, out = self.cfg, self.out
        target = export_model(
            self.ema_network(), out / "model", self.scheduler_config, cfg.export_fp16, self.info(step), self.base
        )
        if cfg.export_raw:
            info = dict(self.info(step), weights="raw")
            export_model(self.raw, out / "model_raw", self.scheduler_config, cfg.export_fp16, info, self.base)
        return target

    def checkpoint(self, step: int) -> Path:
        accelerator, main = self.accelerator, self.main
        root = self.out / CHECKPOINTS
        final = root / f"step_{step:07d}"
        # A fixed, short temp name (17 bytes, whatever --out is called): every process of a
        # multi-process run saves its part into it, so it cannot carry a pid or random part.
        tmp = root / f".tmp-step_{step:07d}"
        if main:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if main:
            saved_at = time.strftime("%Y-%m-%dT%H:%M:%S")
            write_json_atomic(tmp / TRAINER_STATE, dict(self.state.state_dict(), saved_at=saved_at))
            _replace_dir(tmp, final)
            for old in list_checkpoints(self.out)[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
            self.export(step)  # a usable model folder at every checkpoint
        accelerator.wait_for_everyone()
        return final

    # ---- the loop ------------------------------------------------------------------------

    def train_seconds_now(self) -> float:
        return self.base_seconds + (time.monotonic() - self.t_loop - self.paused)

    def pause(self, fn, *args):
        """Run fn (a checkpoint or sample grid) without counting it as training time."""
        t0 = time.monotonic()
        try:
            return fn(*args)
        finally:
            dt = time.monotonic() - t0
            self.paused += dt
            self.t_log += dt

    def write_log(self) -> None:
        cfg, step = self.cfg, self.step
        now = time.monotonic()
        mean = self.accelerator.reduce(self.loss_sum / max(1, self.loss_count), reduction="mean").item()
        self.loss_sum.zero_()
        self.loss_count = 0
        # Smoothed training loss: an EMA of the logged means with a ~100-step time constant.
        a = math.exp(-(step - self.step_log) / 100.0)
        state = self.state
        state.loss_ema = mean if state.loss_ema is None else a * state.loss_ema + (1 - a) * mean
        ips = (step - self.step_log) * self.global_batch / max(now - self.t_log, 1e-9)
        rec = dict(
            step=step,
            loss=round(mean, 6),
            loss_ema=round(state.loss_ema, 6),
            lr=lr_at(step - 1, cfg.lr, cfg.warmup_steps, cfg.lr_schedule, cfg.steps, cfg.decay_steps),
            images_per_s=round(ips, 2),
            elapsed_s=round(self.train_seconds_now(), 2),
        )
        self.t_log, self.step_log = now, step
        self.records.append(rec)
        if self.main:
            with open(self.out / LOG_FILE, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")
            self.bar.set_postfix(loss=f"{mean:.4f}", ema=f"{state.loss_ema:.4f}", img_s=f"{ips:.1f}", refresh=False)

    def save_checkpoint(self) -> Path:
        self.state.train_seconds = self.train_seconds_now()
        return self.pause(self.checkpoint, self.step)

    def loop(self) -> TrainResult:
        """Train until --steps, --minutes or a signal; then log, checkpoint, sample and export."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        self.records: list = []
        self.bar = tqdm(
            total=cfg.steps,
            initial=self.start_step,
            desc="training",
            unit="step",
            disable=not (self.main and cfg.progress),
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self.bar_holder.append(self.bar)
        self.step = self.start_step
        self.loss_sum = torch.zeros((), device=self.device)
        self.loss_count = 0
        self.base_seconds = self.state.train_seconds
        self.t_loop = time.monotonic()
        self.paused = 0.0  # seconds spent in checkpoints and sample grids (not training)
        self.t_log, self.step_log = self.t_loop, self.step
        self.t_ckpt = self.t_loop
        self.last_sample = None
        self.stopped_by = "steps"
        self.deadline = None if cfg.minutes is None else self.t_begin + cfg.minutes * 60.0

        with _StopFlag(self.say) as stop_flag:
            while not self.stop_before_step(stop_flag):
                self.train_step()
                self.after_step()
            model_dir, ips = self.finish()
        return TrainResult(
            step=self.step,
            start_step=self.start_step,
            images_seen=self.state.images_seen,
            stopped_by=self.stopped_by,
            elapsed_s=time.monotonic() - self.t_begin,
            images_per_s=ips,
            model_dir=model_dir,
            checkpoint=self.last_ckpt,
            records=self.records,
        )

    def stop_before_step(self, stop_flag: _StopFlag) -> bool:
        """True (``stopped_by`` set) when the run ends here; else takes a checkpoint when one is due by time."""
        cfg, step = self.cfg, self.step
        if cfg.steps is not None and step >= cfg.steps:
            self.stopped_by = "steps"
            return True
        now = time.monotonic()
        time_up = self.deadline is not None and now >= self.deadline
        ckpt_due = cfg.checkpoint_minutes > 0 and now - self.t_ckpt >= cfg.checkpoint_minutes * 60.0
        flags = [time_up, stop_flag.set, ckpt_due]
        if self.world > 1:  # every process takes the same decision at the same step: any one's
            if self.device.type == "cpu" or step % SYNC_EVERY == 0:  # signal or clock stops all
                import torch.distributed as dist

                agreed = torch.tensor(flags, device=self.device, dtype=torch.int32)
                dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
                flags = agreed.bool().tolist()
            else:
                flags = [False, False, False]
        if flags[0] or flags[1]:
            self.stopped_by = "minutes" if flags[0] else "signal"
            return True
        if flags[2] and step != self.start_step:
            self.last_ckpt = self.save_checkpoint()
            self.t_ckpt = time.monotonic()
        return False

    def train_step(self) -> None:
        """One optimizer step (``A`` micro-batches) and the EMA update; advances the counters."""
        cfg, step, accelerator, model, optimizer = self.cfg, self.step, self.accelerator, self.model, self.optimizer
        B, A, world, rank, device, images, gen = self.B, self.A, self.world, self.rank, self.device, self.images, self.gen
        lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.lr_schedule, cfg.steps, cfg.decay_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(A):
            k0 = ((step * A + micro) * world + rank) * B  # this process's slice of the global stream
            idx, flips = self.stream.take(k0, B)
            idx_t = torch.from_numpy(idx).to(images.device, non_blocking=True)
            flips_t = torch.from_numpy(flips).to(device, non_blocking=True)
            x0 = batch_to_model_space(images[idx_t].to(device, non_blocking=True), flips_t)
            gen.manual_seed(mix_seed(cfg.seed, 0x7015E, rank, step, micro))
            noise = torch.randn(x0.shape, generator=gen, device=device)
            if self.log_sigma is None:
                t = torch.randint(0, self.T, (B,), generator=gen, device=device)
            else:  # EDM's log-normal noise levels, on the grid
                t = lognormal_timesteps(self.log_sigma, B, gen)
            with accelerator.accumulate(model):
                x_t = _noisy(x0, t, noise, self.tables)
                pred = model_eps(model, x_t, t, self.base, self.alpha_bar, self.scales)
                loss = weighted_eps_loss(pred, noise, t, self.loss_weights)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            self.loss_sum += loss.detach()
            self.loss_count += 1
        self.ema.step(self.raw.parameters())
        self.step = step + 1
        self.state.step = self.step
        self.state.images_seen += self.global_batch
        self.bar.update(1)

    def after_step(self) -> None:
        """The log record, checkpoint and sample grid due at this step."""
        cfg, step = self.cfg, self.step
        if step % cfg.log_every == 0:
            self.write_log()
        if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0:
            self.last_ckpt = self.save_checkpoint()
            self.t_ckpt = time.monotonic()
        if self.main and cfg.sample_every > 0 and step % cfg.sample_every == 0:
            self.pause(self.write_samples, step)
            self.last_sample = step

    def finish(self):
        """The end: last log record, checkpoint, samples and export; (model folder or None, images/s)."""
        cfg, step = self.cfg, self.step
        run_seconds = self.train_seconds_now() - self.base_seconds
        if self.loss_count:
            self.write_log()
        self.bar.close()
        steps_done = step - self.start_step
        ips = steps_done * self.global_batch / max(run_seconds, 1e-9) if steps_done else 0.0
        if self.last_ckpt is None or self.last_ckpt.name != f"step_{step:07d}":
            self.last_ckpt = self.save_checkpoint()
        model_dir = None
        if self.main:
            if cfg.sample_every > 0 and self.last_sample != step and steps_done > 0:
                self.write_samples(step)
            model_dir = self.export(step)
            self.say(
                f"stopped by {self.stopped_by} at step {step} ({steps_done} steps this run, "
                f"{ips:.1f} images/s); EMA model -> {model_dir}"
            )
        self.accelerator.wait_for_everyone()
        return model_dir, ips


def device_is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def _version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # pragma: no cover
        return "unknown"
