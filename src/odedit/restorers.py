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
from dataclasses import asdict, dataclass, field
from typing import Callable, ClassVar, Optional, Sequence, Union

import torch

from odedit.langevin import langevin, langevin_step_size
from odedit.models import EpsModel, load_model
from odedit.ode import clip_x0, dynamic_threshold
from odedit.rng import generators_for, randn_per_image
from odedit.schedule import timestep_grid
from odedit.solvers import SOLVERS, decode, invert
from odedit.sde import forward_noise, stochastic_step

# The measurements behind these settings: docs/results.md (fast: docs/performance.md).
#
# Total Langevin updates of the presets (paper section 4.1: 100 light, 200 medium, 300 heavy;
# ``fast`` is ours, see PRESET_SETTINGS).
PRESETS = {"light": 100, "medium": 200, "heavy": 300, "fast": 40}
# The measured default of the tool (`odedit restore`, the app, ``ODEdit(model)``); the paper names
# none. Session 18, the GPU prior, all 300 val faces, one dtype (CPU bf16), through restore's gate:
# fast over light (the default until then) +0.20 +- 0.03 dB and +0.008 SSIM face by face (5 of 300
# faces > 0.1 dB worse), SWD 46.6 against 49.7, at 80 model calls instead of 300; the method alone
# +1.18 dB. Held out (the last 300 val faces, tuned on by nothing): +0.27 +- 0.03 dB, +0.012 SSIM.
# ``ODEditConfig()`` itself stays the paper's Algorithm 1 (light's grid and levels).
DEFAULT_PRESET = "fast"
PAPER_STEPS = 100
PAPER_LEVELS = (0, 25, 50, 75)  # of PAPER_STEPS
PAPER_STEP_SIZE = 1e-6  # epsilon of Algorithm 1 as we read section 4.1
# With the shipped prior the paper's 1e-6 leaves images almost unchanged. 1e-5 was the method's best
# alone; through `odedit restore`'s gate larger steps are better, face by face on 150 val faces:
# 2e-5 over 1e-5 +0.21 +- 0.03 dB and +0.009 SSIM (session 15), 4e-5 over 2e-5 +0.28 +- 0.05 dB and
# +0.018 SSIM, 4 faces > 0.1 dB worse; SWD 59.5 -> 53.9 -> 49.6 (session 16, docs/results.md).
DEFAULT_STEP_SIZE = 4e-5
PAPER_TEMPERATURE = 1.0 / 3.0
# Settings a preset changes from the paper's (light/medium/heavy change none). ``fast``:
# DPM-Solver++(2M) on a 20-level grid, 10 updates at each of the 4 levels at 2.5e-5 (first chosen
# as the Langevin time K * eps per level of light at 1e-5): 2 x 20 + 40 = 80 model calls. Rechecked
# on the GPU prior (session 18, 150 val faces, through restore's gate, face by face): 2.5e-5 over
# 1e-5 +0.06 +- 0.02 dB / +0.006 SSIM, over 5e-5 +0.03 +- 0.02 dB / -0.005 SSIM (SWD 49.6 against
# 47.3 and 55.8): kept.
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
    """Settings of ODEdit (Algorithm 1). Field defaults: paper section 4.1 (preset ``light``)
    with the measured step size 4e-5 (the paper's 1e-6 is ``PAPER_STEP_SIZE``). The tool's
    default is the preset :data:`DEFAULT_PRESET` (``fast``): ``ODEditConfig.from_options()``.

    Attributes:
        steps: N, the number of DDIM levels of the ODE grid (paper: 100).
        levels: indices into the grid (0 = lowest noise) where Langevin runs (paper: 0,25,50,75).
        langevin_steps: K, Langevin updates at *each* level (total = K * len(levels)).
        step_size: epsilon of Algorithm 1 (default 4e-5; paper: 1e-6); a_t = epsilon * sigma_t / sigma_1.
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

    method: ClassVar[str] = "odedit"  # its name in --method, the app and bench records

    steps: int = PAPER_STEPS
    levels: tuple[int, ...] = PAPER_LEVELS
    langevin_steps: int = PRESETS["light"] // len(PAPER_LEVELS)
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

    @property
    def stochastic(self) -> bool:
        """Whether the result depends on the seed: only through Langevin noise."""
        return self.total_langevin_steps > 0 and self.temperature > 0 and self.step_size > 0

    @classmethod
    def from_options(cls, preset: Optional[str] = None, **overrides) -> "ODEditConfig":
        """:meth:`from_preset` (None = the default preset); options that are None keep the preset's."""
        return cls.from_preset(DEFAULT_PRESET if preset is None else preset, **overrides)

    @classmethod
    def from_preset(cls, preset: str = DEFAULT_PRESET, **overrides) -> "ODEditConfig":
        """A preset plus overrides: light/medium/heavy = the paper's grid, levels and temperature
        with 100/200/300 Langevin updates in total (and the default step size, 4e-5);
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

    method: ClassVar[str] = "sdedit"  # its name in --method, the app and bench records

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

    @property
    def stochastic(self) -> bool:
        """Always: the injected noise is drawn from the seed."""
        return True

    @classmethod
    def from_options(cls, **options) -> "SDEditConfig":
        """The config with the given fields; options that are None keep the defaults."""
        return cls(**{k: v for k, v in options.items() if v is not None})

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

    Notation key (Algorithm 1):
        n           level of the ``config.steps``-level grid, 0 = least noise (the paper's t = n + 1);
                    level -1 is the image itself
        grid[n]     training timestep of level n
        top         config.top_level, the level the inversion reaches (the paper's N: the top)
        x_n         latent at level n (x_{-1}: the degraded image, then the restored one)
        sigma_n     sqrt(1 - alpha_bar) at level n; sigma_1 is level 0's
        K, eps, T   Langevin updates per chosen level, step size, temperature
        chosen      the levels where Langevin runs: config.levels, or none when K = 0

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
    top, sigma_1 = config.top_level, schedule.sigma_at(grid[0])
    inv_transform = clip_x0 if config.clip_inversion_x0 else None
    dec_transform = dynamic_threshold(config.decode_threshold) if config.decode_threshold else None
    chosen = sorted(config.levels, reverse=True) if config.langevin_steps > 0 else []
    solver, iters = config.solver, config.inversion_iters

    # 1. x_top = ODE_SOLVER_forward(x_{-1}): eq. 8 (or DPM-Solver++, or fixed-point DDIM) up to the top.
    x = invert(model, x0, grid, top, inv_transform, callback, solver=solver, inversion_iters=iters)
    # 2. for n = top .. 0, in segments that end at the chosen levels below the top and at the image:
    n = top
    for n_next in [*(lv for lv in chosen if lv < top), -1]:
        if n in chosen:
            # 3. a_n = eps * sigma_n / sigma_1;  4-5. K Langevin updates with score -eps/sigma_n (eq. 9).
            a_n = langevin_step_size(config.step_size, schedule.sigma_at(grid[n]), sigma_1)
            x = langevin(model, x, grid[n], config.langevin_steps, a_n, config.temperature, generators, callback)
        # 6. x_{n_next} = ODE_SOLVER_backward(x_{n,K}) (eq. 8): one solver call per segment, so a
        #    multistep solver restarts after each Langevin block, whose moves make its history stale.
        x = decode(model, x, grid, n, n_next, dec_transform, callback, solver=solver)
        n = n_next
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


# ---- the one table of methods ------------------------------------------------------------

# The config's type picks the algorithm. A new restoration method is a config class (with
# ``method``, ``nfe``, ``stochastic``, ``from_options`` and ``to_dict``) and its function, added here.
ALGORITHMS: dict[type, Callable[..., torch.Tensor]] = {ODEditConfig: odedit, SDEditConfig: sdedit}
# Method name (--method, the app, bench records) -> config type.
METHODS: dict[str, type] = {config_type.method: config_type for config_type in ALGORITHMS}


def algorithm_for(config) -> Callable[..., torch.Tensor]:
    """The restoration function of a config (:data:`ALGORITHMS`); TypeError for another type."""
    try:
        return ALGORITHMS[type(config)]
    except KeyError:
        names = ", ".join(t.__name__ for t in ALGORITHMS)
        raise TypeError(f"no restoration method takes a {type(config).__name__}; expected one of {names}") from None


def config_for(method: str, **options):
    """The config of method ``method`` (a key of :data:`METHODS`) from options (None = default)."""
    try:
        config_type = METHODS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}") from None
    return config_type.from_options(**options)


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
class Restorer:
    """A loaded model and a config; the config's type picks the algorithm (:data:`ALGORITHMS`)."""

    model: EpsModel
    config: object = field(default=None)
    default_config: ClassVar[Optional[type]] = None  # ODEdit / SDEdit: the config type they take

    def __post_init__(self) -> None:
        wanted = self.default_config
        if self.config is None and wanted is not None:
            self.config = wanted.from_options()  # ODEdit: the default preset; SDEdit: the defaults
        if wanted is not None and not isinstance(self.config, wanted):
            raise TypeError(f"{type(self).__name__} needs an {wanted.__name__}, got {type(self.config).__name__}")
        algorithm_for(self.config)  # TypeError for a config no method takes

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
            out = algorithm_for(self.config)(self.model, x * 2.0 - 1.0, self.config, gens, callback)
        diverged = ~torch.isfinite(out).flatten(1).all(1) | (out.abs().flatten(1).amax(1) > DIVERGED_ABS)
        out = ((out + 1.0) / 2.0).clamp(0.0, 1.0).to(images.dtype)
        return (out[0], diverged[0]) if single else (out, diverged)


@dataclass(eq=False)
class ODEdit(Restorer):
    """ODEdit with a loaded model; ``config`` defaults to the default preset (``fast``)."""

    default_config: ClassVar[Optional[type]] = ODEditConfig


@dataclass(eq=False)
class SDEdit(Restorer):
    """SDEdit with a loaded model; ``config`` defaults to strength 0.5 on 100 steps."""

    default_config: ClassVar[Optional[type]] = SDEditConfig
