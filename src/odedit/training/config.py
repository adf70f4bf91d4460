"""The settings of a training run (:class:`TrainConfig`), its outcome and its error."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from odedit.gaussian import PRECONDITIONS
from odedit.precond import EDM_SIGMA_DATA
from odedit.unets import UNET_CONFIGS

MIXED_PRECISION = ("no", "bf16", "fp16", "auto")  # auto: odedit.devices.auto_mixed_precision
LR_SCHEDULES = ("constant", "cosine", "linear")
NOISE_LEVELS = ("uniform", "lognormal")


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
    # docs/training.md, recipe study part 3: with the EDM-preconditioned residual, 1e-3 trained the
    # low noise levels 37 % better than 3e-4 at equal images (batch 32) and stayed stable in the
    # long run. EDM itself used 1e-3 at batch 512 on CIFAR-10 and 2e-4 at batch 256 on FFHQ 64.
    lr: float = 1e-3
    warmup_steps: int = 500
    lr_schedule: str = "constant"
    # None: a cosine/linear schedule decays over every step after the warm-up. N: only over the
    # last N steps before --steps (a cool-down; with --resume, a branch of a constant-lr run).
    decay_steps: Optional[int] = None
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
    # Rank k of the closed-form Gaussian base (PPCA of the training faces) the network learns a
    # residual on (odedit.training.base); 0 = none (a plain eps network, as before).
    gaussian_rank: Optional[int] = 0
    # "edm": EDM-style preconditioning, loss weighting and log-normal noise levels (Karras et al.
    # 2022; odedit.precond) around the Gaussian base, or around N(0, sigma_data^2 I) without one.
    # None: keep the preconditioning of the base the run resumes or warm-starts from; a newly fitted
    # base gets "edm" (the recipe study's winner), or "none" with min_snr_gamma.
    precondition: Optional[str] = None
    sigma_data: float = EDM_SIGMA_DATA
    # How training draws noise levels: "uniform" over 0..T-1 (DDPM) or "lognormal" (EDM's
    # ln s ~ N(-1.2, 1.2^2) on the grid); None: lognormal when the run's base is preconditioned
    # "edm" (also on resume, where the base in the run folder decides), else uniform.
    noise_levels: Optional[str] = None
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
        if self.decay_steps is not None:
            if self.decay_steps < 1:
                raise TrainError(f"decay steps must be >= 1, got {self.decay_steps}")
            if self.lr_schedule == "constant":
                raise TrainError("--decay-steps sets the length of a decay: pass --lr-schedule linear or cosine")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise TrainError(f"EMA decay must be in [0, 1], got {self.ema_decay}")
        if self.ema_power is not None and not 0.0 < self.ema_power <= 1.0:
            raise TrainError(f"EMA warm-up power must be in (0, 1], got {self.ema_power}")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0.0:
            raise TrainError(f"min-SNR gamma must be > 0, got {self.min_snr_gamma}")
        if self.precondition not in (None,) + PRECONDITIONS:
            raise TrainError(f"precondition must be one of {PRECONDITIONS}, got {self.precondition!r}")
        if self.precondition == "edm" and self.min_snr_gamma is not None:
            raise TrainError("--precondition edm weights the loss itself: drop --min-snr-gamma")
        if self.noise_levels not in (None,) + NOISE_LEVELS:
            raise TrainError(f"noise levels must be one of {NOISE_LEVELS}, got {self.noise_levels!r}")
        if not (math.isfinite(self.sigma_data) and self.sigma_data > 0):
            raise TrainError(f"sigma_data must be > 0, got {self.sigma_data}")
        if self.gaussian_rank is not None and not 0 <= self.gaussian_rank <= 4096:
            raise TrainError(f"gaussian rank must be in 0..4096, got {self.gaussian_rank}")
        for name in ("batch_size", "grad_accum", "sample_steps", "num_samples", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise TrainError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.resume and self.resume_from_weights:
            raise TrainError("--resume and --resume-from-weights exclude each other")


@dataclass
class TrainResult:
    """What a call of :func:`odedit.training.train` did."""

    step: int  # optimizer steps done in total (all invocations)
    start_step: int  # the step this invocation started at (0, or the resumed step)
    images_seen: int  # training images drawn in total (all processes, all invocations)
    stopped_by: str  # "steps" | "minutes" | "signal"
    elapsed_s: float  # wall time of this invocation
    images_per_s: float  # training throughput of this invocation's loop (all processes)
    model_dir: Optional[Path]  # the exported EMA model (None on non-main processes)
    checkpoint: Optional[Path]  # the last checkpoint written or resumed from
    records: list = field(default_factory=list)  # the log.jsonl records written by this call
