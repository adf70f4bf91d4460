"""The restorers: ODEdit (Algorithm 1 of the paper) and the SDEdit baseline.

Both are pure functions of (model, image batch, config, per-image generators) plus a
thin class that holds a loaded model and a config for convenience::

    from odedit import ODEdit
    restorer = ODEdit.from_pretrained("path/or/hub-id", device="cpu")
    out = restorer.restore(images, generator=[torch.Generator().manual_seed(s) for s in seeds])
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Optional, Sequence, Union

import torch

from odedit.langevin import langevin, langevin_step_size
from odedit.models import EpsModel, load_model
from odedit.ode import clip_x0, ddim_invert_path_fixed_point, dynamic_threshold
from odedit.rng import generators_for, randn_per_image
from odedit.schedule import timestep_grid
from odedit.solvers import SOLVERS, solver_path
from odedit.sde import forward_noise, stochastic_step

# Total Langevin updates of the presets (paper section 4.1: 100 light, 200 medium, 300 heavy;
# ``fast`` is ours, see PRESET_SETTINGS).
PRESETS = {"light": 100, "medium": 200, "heavy": 300, "fast": 40}
DEFAULT_PRESET = "light"  # the measured default (docs/results.md); the paper names no default
# On 300 val faces with the embedded prior (docs/results.md, Table 1; DPM-Solver++(2M), 20 steps,
# the presets' Langevin updates at the same levels): light is the best over all
# corruptions (+0.39 dB over the source, SWD 75 -> 48); medium gains +1.15 dB over light on noise
# and +0.75 on masks but loses 1.1 on blur and 0.36 dB overall, its faces smoother (SWD 71);
# heavy is worse than medium on every corruption family (-1.22 dB against light, SWD 88).
# The presets keep the paper's grid (DDIM, 100 steps): it is the more faithful one. On 100 val
# faces light on it beats light on DPM-Solver++(2M) with 20 steps (Table 1's grid for the other
# ODEdit rows; a more accurate round trip, 32.1 vs 29.8 dB) by +0.21 +/- 0.02 dB PSNR and
# +0.030 +/- 0.002 SSIM (paired), at SWD 56.5 vs 52.1 and 300 vs 140 model calls; on all 300
# faces it gives 17.58 dB (+0.62 over the source) and SSIM 0.551, level with the source
# (docs/results.md, Table 1).
PAPER_STEPS = 100
PAPER_LEVELS = (0, 25, 50, 75)  # of PAPER_STEPS
PAPER_STEP_SIZE = 1e-6  # epsilon of Algorithm 1 as we read section 4.1
# The default epsilon: with the shipped prior the paper's 1e-6 leaves images almost unchanged
# (100 val faces, light: PSNR -0.35 dB, SWD 80.5 -> 79.1), 1e-4 melts faces into blobs
# (-4.4 dB, SWD 136), and 1e-5 is the one that restores (+0.2 dB, SWD 52.1; docs/results.md).
DEFAULT_STEP_SIZE = 1e-5
PAPER_TEMPERATURE = 1.0 / 3.0
# Settings a preset changes from the paper's (light/medium/heavy change none). ``fast``:
# DPM-Solver++(2M) on a 20-level grid, 10 updates at each of the 4 levels with 2.5x light's
# step size 1e-5 (the same Langevin time K * eps per level as light's 25 updates at 1e-5):
# 2 x 20 + 40 = 80 model calls. On 100 val faces against light on the same grid
# (docs/performance.md, "The fast preset"): PSNR +0.06 +/- 0.03 dB, SSIM +0.002, SWD 51.0 vs
# 52.1, within the restoration-seed spread. The same Langevin on a 10-step grid (60 calls)
# lost 1.0 dB: the coarse ODE, not the larger steps.
PRESET_SETTINGS: dict[str, dict] = {
    "fast": {"steps": 20, "solver": "dpm++2m", "step_size": 2.5e-5},
}
# A decoded image lives in [-1, 1] (model space): a trained prior overshoots a little, an
# untrained test UNet reaches ~60; diverged runs (e.g. step size 1e3) reach ~1e7. Beyond this
# bound a result is not an image.
DIVERGED_ABS = 1e3


def scaled_levels(steps: int, levels: Sequence[int] = PAPER_LEVELS, of: int = PAPER_STEPS) -> tuple[int, ...]:
    """The paper's levels {0,25,50,75} of 100 moved to a grid of ``steps`` levels."""
    return tuple(sorted({min(steps - 1, int(round(lv * steps / of))) for lv in levels}))


@dataclass(frozen=True)
class ODEditConfig:
    """Settings of ODEdit (Algorithm 1). Defaults: paper section 4.1 with preset ``light``
    and the measured step size 1e-5 (the paper's 1e-6 is ``PAPER_STEP_SIZE``).

    Attributes:
        steps: N, the number of DDIM levels of the ODE grid (paper: 100).
        levels: indices into the grid (0 = lowest noise) where Langevin runs (paper: 0,25,50,75).
        langevin_steps: K, Langevin updates at *each* level (total = K * len(levels)).
        step_size: epsilon of Algorithm 1 (default 1e-5; paper: 1e-6); a_t = epsilon * sigma_t / sigma_1.
        temperature: T of Algorithm 1 (paper: 1/3).
        invert_to: grid level the inversion reaches (default: the top, steps - 1).
        clip_inversion_x0: clip the predicted x0 to [-1, 1] inside inversion steps (official code).
        decode_threshold: dynamic-thresholding percentile for decoding (e.g. 0.995), or None.
        solver: ODE solver of inversion and decoding: ``ddim`` (eq. 8, the paper's) or
            ``dpm++2m`` (DPM-Solver++(2M), :mod:`odedit.solvers`; same model calls per step).
        inversion_iters: fixed-point refinements of each DDIM inversion step (0 = the usual
            explicit step); > 0 makes inversion the exact inverse of DDIM decoding
            (:func:`odedit.ode.ddim_invert_path_fixed_point`), at (1 + iters) calls per step.
    """

    steps: int = PAPER_STEPS
    levels: tuple[int, ...] = PAPER_LEVELS
    langevin_steps: int = PRESETS[DEFAULT_PRESET] // len(PAPER_LEVELS)
    step_size: float = DEFAULT_STEP_SIZE
    temperature: float = PAPER_TEMPERATURE
    invert_to: Optional[int] = None
    clip_inversion_x0: bool = False
    decode_threshold: Optional[float] = None
    solver: str = "ddim"
    inversion_iters: int = 0

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if not isinstance(self.inversion_iters, int) or self.inversion_iters < 0:
            raise ValueError(f"inversion_iters must be an integer >= 0, got {self.inversion_iters!r}")
        if self.inversion_iters and self.solver != "ddim":
            raise ValueError("inversion_iters (fixed-point inversion) needs solver='ddim' (--solver ddim)")
        if self.inversion_iters and self.clip_inversion_x0:
            # clipping makes the step non-affine in x: the iteration no longer inverts decoding
            raise ValueError("inversion_iters (exact inversion) and clip_inversion_x0 exclude each other")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        top = self.top_level
        if not 0 <= top < self.steps:
            raise ValueError(f"invert_to must be in [0, {self.steps - 1}], got {self.invert_to}")
        levels = tuple(int(lv) for lv in self.levels)
        if len(set(levels)) != len(levels):
            raise ValueError(f"levels must be distinct, got {levels}")
        bad = [lv for lv in levels if not 0 <= lv <= top]
        if bad:
            raise ValueError(f"levels {bad} outside the grid [0, {top}] (steps={self.steps})")
        object.__setattr__(self, "levels", tuple(sorted(levels)))
        if not isinstance(self.langevin_steps, int) or self.langevin_steps < 0:
            raise ValueError(f"langevin_steps must be an integer >= 0, got {self.langevin_steps!r}")
        if not (self.step_size >= 0 and math.isfinite(self.step_size)):
            raise ValueError(f"step_size must be finite and >= 0, got {self.step_size}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be finite and >= 0, got {self.temperature}")
        if self.decode_threshold is not None and not 0 < self.decode_threshold <= 1:
            raise ValueError(f"decode_threshold must be in (0, 1], got {self.decode_threshold}")

    @property
    def top_level(self) -> int:
        return self.steps - 1 if self.invert_to is None else int(self.invert_to)

    @property
    def total_langevin_steps(self) -> int:
        return self.langevin_steps * len(self.levels)

    @property
    def nfe(self) -> int:
        """Model calls per image: inversion (x (1 + inversion_iters)) + decoding + Langevin."""
        return (self.top_level + 1) * (2 + self.inversion_iters) + self.total_langevin_steps

    @classmethod
    def from_preset(cls, preset: str = DEFAULT_PRESET, **overrides) -> "ODEditConfig":
        """A preset plus overrides: light/medium/heavy = the paper's grid, levels and temperature
        with 100/200/300 Langevin updates in total (and the default step size, 1e-5);
        ``fast`` = :data:`PRESET_SETTINGS` ``["fast"]`` with 40.

        If ``steps`` is overridden but ``levels`` is not, the paper's levels are scaled to
        the new grid. ``langevin_steps`` (per level) overrides the preset's total.
        """
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
        overrides = {**PRESET_SETTINGS.get(preset, {}), **{k: v for k, v in overrides.items() if v is not None}}
        steps = overrides.get("steps", PAPER_STEPS)
        levels = tuple(overrides.get("levels", scaled_levels(steps)))
        if not levels:
            raise ValueError("levels must not be empty (use langevin_steps=0 for no Langevin)")
        overrides.setdefault("langevin_steps", PRESETS[preset] // len(levels))
        overrides["levels"] = levels
        return cls(**overrides)

    def to_dict(self) -> dict:
        return {**asdict(self), "total_langevin_steps": self.total_langevin_steps, "nfe": self.nfe}


@dataclass(frozen=True)
class SDEditConfig:
    """Settings of SDEdit (Meng et al. 2021): noise to a level, then reverse stochastically.

    Attributes:
        steps: levels of the reverse grid (100 -> strided DDPM; 1000 -> original DDPM).
        strength: t0 as a fraction of the diffusion in (0, 1]; the start level is
            ceil(strength * steps) - 1.
        eta: 1.0 = DDPM ancestral noise (SDEdit); 0 = deterministic DDIM from the noised input.
        calls: None, or the number of model calls: the reverse path is then ``calls`` evenly
            spaced integer timesteps from the same start t0 down to 0 (to compare with
            another method at equal cost without moving t0); at most t0 + 1.
    """

    steps: int = PAPER_STEPS
    strength: float = 0.5
    eta: float = 1.0
    calls: Optional[int] = None

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if not 0 < self.strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if not 0 <= self.eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
        if self.calls is not None and (not isinstance(self.calls, int) or self.calls < 1):
            raise ValueError(f"calls must be a positive integer or None, got {self.calls!r}")

    @property
    def start_level(self) -> int:
        return max(0, math.ceil(self.strength * self.steps - 1e-9) - 1)

    @property
    def nfe(self) -> int:
        return self.start_level + 1 if self.calls is None else self.calls

    def timesteps(self, num_train_timesteps: int) -> list[int]:
        """The descending training timesteps SDEdit evaluates the model at, t0 first."""
        grid = timestep_grid(num_train_timesteps, self.steps)
        t0 = grid[self.start_level]
        if self.calls is None:
            return [grid[i] for i in range(self.start_level, -1, -1)]
        if self.calls > t0 + 1:
            raise ValueError(f"SDEdit from t0={t0} can make at most {t0 + 1} model calls, got calls={self.calls}")
        if self.calls == 1:
            return [t0]
        return [int(math.floor(t0 - i * t0 / (self.calls - 1) + 0.5)) for i in range(self.calls)]

    def to_dict(self) -> dict:
        return {**asdict(self), "start_level": self.start_level, "nfe": self.nfe}


Progress = Optional[Callable[[int], None]]


def odedit(
    model: EpsModel,
    x0: torch.Tensor,
    config: ODEditConfig,
    generators: Sequence[torch.Generator],
    callback: Progress = None,
) -> torch.Tensor:
    """ODEdit, Algorithm 1: ODE inversion, then Langevin + ODE decoding level by level.

    Args:
        model: eps(x, t) contract.
        x0: (B, C, H, W) degraded images in model space ([-1, 1]), float.
        generators: one torch.Generator per image on x0.device (Langevin noise).
        callback: called with 1 after each model call (progress bars).
    Returns:
        (B, C, H, W) restored images in model space, not clipped.
    """
    schedule = model.schedule
    grid = timestep_grid(schedule.num_train_timesteps, config.steps)
    top = config.top_level
    sigma_1 = schedule.sigma_at(grid[0])
    levels = set(config.levels)
    inv_transform = clip_x0 if config.clip_inversion_x0 else None
    dec_transform = dynamic_threshold(config.decode_threshold) if config.decode_threshold else None

    # 1. x_{N,0} = ODE_SOLVER_forward(x0): eq. 8 (or DPM-Solver++) from the image up to the top level.
    up = [-1, *grid[: top + 1]]
    if config.inversion_iters:
        x = ddim_invert_path_fixed_point(model, x0, up, config.inversion_iters, inv_transform, callback)
    else:
        x = solver_path(config.solver, model, x0, up, inv_transform, callback)
    # 2. for t = N .. 1 (grid levels top .. 0), in segments that end at a Langevin level:
    lv_active = sorted((lv for lv in levels if config.langevin_steps > 0), reverse=True)
    level = top
    while level >= 0:
        t = grid[level]
        if level in lv_active:
            # 3. a_t = eps * sigma_t / sigma_1;  4-5. K Langevin updates with score -eps/sigma_t (eq. 9).
            a_t = langevin_step_size(config.step_size, schedule.sigma_at(t), sigma_1)
            x = langevin(model, x, t, config.langevin_steps, a_t, config.temperature, generators, callback)
        # 6. x_{t-1} = ODE_SOLVER_backward(x_{t,K}): down to the next Langevin level (or the image).
        #    One solver call per segment: a multistep solver restarts after each Langevin block,
        #    whose moves make its history stale. For DDIM this is step-by-step eq. 8 as before.
        below = [lv for lv in lv_active if lv < level]
        stop = below[0] if below else -1
        path = [grid[i] for i in range(level, max(stop, 0) - 1, -1)] + ([-1] if stop == -1 else [])
        x = solver_path(config.solver, model, x, path, dec_transform, callback)
        level = stop if stop >= 0 else -1
    return x


def sdedit(
    model: EpsModel,
    x0: torch.Tensor,
    config: SDEditConfig,
    generators: Sequence[torch.Generator],
    callback: Progress = None,
) -> torch.Tensor:
    """SDEdit: inject noise up to the start level, then the stochastic reverse process.

    Args and return as :func:`odedit`.
    """
    schedule = model.schedule
    path = config.timesteps(schedule.num_train_timesteps)
    # 1. x_{t0} = sqrt(ab) x0 + sigma z  (noise injection, the "hijack").
    x = forward_noise(x0, randn_per_image(x0, generators), schedule.alpha_bar_at(path[0]))
    # 2. reverse from t0 to the image with DDPM-style ancestral steps.
    for t, t_next in zip(path, [*path[1:], -1]):
        eps = model(x, t)
        noise = randn_per_image(x, generators)
        x = stochastic_step(x, eps, noise, schedule.alpha_bar_at(t), schedule.alpha_bar_at(t_next), config.eta)
        if callback is not None:
            callback(1)
    return x


# ---- convenience classes ----------------------------------------------------------------

GeneratorArg = Union[None, torch.Generator, Sequence[torch.Generator]]


def _generators(generator: GeneratorArg, batch: int, device: torch.device) -> list[torch.Generator]:
    """Per-image generators on ``device`` from the user's argument.

    A list gives one generator per image (batch-size independent results). A single
    generator draws one seed per image from it. None uses fresh random seeds.
    """
    if generator is None:
        return generators_for([secrets.randbits(62) for _ in range(batch)], device)
    if isinstance(generator, torch.Generator):
        seeds = torch.randint(0, 2**62, (batch,), generator=generator, device=generator.device)
        return generators_for(seeds.tolist(), device)
    gens = list(generator)
    if len(gens) != batch:
        raise ValueError(f"got {len(gens)} generators for {batch} images; pass one per image")
    out = []
    for g in gens:
        if g.device == device:
            out.append(g)
        else:  # move the stream: seed a generator on the model's device from this one
            seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device))
            out.append(torch.Generator(device=device).manual_seed(seed))
    return out


@dataclass(eq=False)
class _Restorer:
    model: EpsModel
    config: object = field(default=None)

    @classmethod
    def from_pretrained(
        cls,
        source=None,
        config=None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        """Load a model (None = the embedded default prior, a folder, or a hub id)."""
        return cls(load_model(source, device=device, dtype=dtype), config)

    def _run(self, x, generators, callback):  # pragma: no cover - overridden
        raise NotImplementedError

    def restore(
        self,
        images: torch.Tensor,
        generator: GeneratorArg = None,
        callback: Progress = None,
    ) -> torch.Tensor:
        """Restore a batch of images. Runs under ``torch.no_grad()``.

        Args:
            images: float tensor (B, C, H, W) or (C, H, W), values in [0, 1], at the
                model's resolution (``odedit.imageio`` resizes files for you).
            generator: a list of one torch.Generator per image (results independent of
                batching), a single generator (one seed per image is drawn from it), or
                None (fresh random seeds).
        Returns:
            float tensor like ``images``, values clamped to [0, 1].
        """
        out, _ = self.restore_with_status(images, generator, callback)
        return out

    def restore_with_status(
        self,
        images: torch.Tensor,
        generator: GeneratorArg = None,
        callback: Progress = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`restore`, plus a (B,) bool tensor: True where the restoration diverged
        (non-finite values, or model-space values beyond +-DIVERGED_ABS before the clamp,
        e.g. from a far too large step size). Such an image is not a result."""
        single = images.ndim == 3
        x = images.unsqueeze(0) if single else images
        size = self.model.sample_size
        if x.ndim != 4 or x.shape[1] != self.model.in_channels or x.shape[-2:] != (size, size):
            raise ValueError(
                f"expected images of shape (B, {self.model.in_channels}, {size}, {size}), got {tuple(images.shape)}"
            )
        device = getattr(self.model, "device", x.device)
        x = x.to(device=device, dtype=torch.float32)
        gens = _generators(generator, x.shape[0], device)
        with torch.no_grad():
            out = self._run(x * 2.0 - 1.0, gens, callback)
        diverged = ~torch.isfinite(out).flatten(1).all(1) | (out.abs().flatten(1).amax(1) > DIVERGED_ABS)
        out = ((out + 1.0) / 2.0).clamp(0.0, 1.0).to(images.dtype)
        return (out[0], diverged[0]) if single else (out, diverged)


@dataclass(eq=False)
class ODEdit(_Restorer):
    """ODEdit with a loaded model; ``config`` defaults to the ``light`` preset (step size 1e-5)."""

    def __post_init__(self) -> None:
        if self.config is None:
            self.config = ODEditConfig()
        if not isinstance(self.config, ODEditConfig):
            raise TypeError(f"ODEdit needs an ODEditConfig, got {type(self.config).__name__}")

    def _run(self, x, generators, callback):
        return odedit(self.model, x, self.config, generators, callback)


@dataclass(eq=False)
class SDEdit(_Restorer):
    """SDEdit with a loaded model; ``config`` defaults to strength 0.5 on 100 steps."""

    def __post_init__(self) -> None:
        if self.config is None:
            self.config = SDEditConfig()
        if not isinstance(self.config, SDEditConfig):
            raise TypeError(f"SDEdit needs an SDEditConfig, got {type(self.config).__name__}")

    def _run(self, x, generators, callback):
        return sdedit(self.model, x, self.config, generators, callback)


def with_overrides(config, **changes):
    """A copy of a frozen config with some fields changed (validated again)."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})
