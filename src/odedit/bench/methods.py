"""The methods ``odedit bench`` evaluates: :class:`MethodSpec` (kind, config, best-of-N
oracle), the naming rules that make a method's name encode its settings
(:func:`odedit_method_name`, :func:`sdedit_method_name`), SDEdit with a given number of
model calls (:func:`sdedit_nfe_matched`), and the ordered, de-duplicated list of methods
of a run (:func:`build_methods`, with the standard :func:`ablation_methods`). What differs
between methods is picked by the config's type (:data:`odedit.restorers.METHODS`), never by
comparing method names. It depends only on :mod:`odedit.restorers` and on
:mod:`odedit.bench.records` for BenchError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence

from odedit.bench.records import BenchError
from odedit.restorers import (
    DEFAULT_PRESET,
    PAPER_STEP_SIZE,
    PAPER_STEPS,
    PAPER_TEMPERATURE,
    PRESET_SETTINGS,
    METHODS,
    PRESETS,
    ODEditConfig,
    SDEditConfig,
    scaled_levels,
)

SOURCE = "source"  # the degraded image itself, as a method (no config, no model calls)
METHOD_KINDS = (SOURCE, *METHODS)  # source, odedit, sdedit: the restoration methods' own table
ABLATION_STEP_SIZES = (1e-6, 1e-5, 1e-4)


@dataclass(frozen=True)
class MethodSpec:
    """One evaluated method.

    Attributes:
        name: unique, used for folders and tables (e.g. ``odedit-light-eps1e-05``).
        kind: ``source`` (the degraded image itself), ``odedit`` or ``sdedit``.
        config: ODEditConfig / SDEditConfig (None for source).
        best_of: > 1 = oracle: N samples, the one with the best PSNR against the clean
            image is kept (uses the ground truth; labelled as such everywhere).
        preset: the ODEdit preset the config derives from.
        note: shown in the summary.
        ablation: part of the ``--ablations`` set.
    """

    name: str
    kind: str
    config: object = None
    best_of: int = 1
    preset: Optional[str] = None
    note: str = ""
    ablation: bool = False

    def __post_init__(self) -> None:
        if self.kind not in METHOD_KINDS:
            raise ValueError(f"unknown method kind {self.kind!r}; expected one of {METHOD_KINDS}")
        wanted = METHODS.get(self.kind)
        if wanted is not None and not isinstance(self.config, wanted):
            raise TypeError(f"an {self.kind} method needs an {wanted.__name__}")
        if wanted is None and self.config is not None:
            raise TypeError(f"the {self.kind} method takes no config")
        if int(self.best_of) < 1:
            raise ValueError(f"best_of must be >= 1, got {self.best_of}")

    @property
    def nfe(self) -> int:
        """Model calls per image (all samples of a best-of-N method)."""
        return 0 if self.config is None else int(self.config.nfe) * int(self.best_of)

    @property
    def restores(self) -> bool:
        """False for the source (the degraded image itself), True for a restoration method."""
        return self.config is not None

    @property
    def stochastic(self) -> bool:
        return self.restores and self.config.stochastic

    @property
    def oracle(self) -> bool:
        return self.best_of > 1

    def identity(self) -> dict:
        """What defines the method's results (compared when resuming)."""
        return {
            "kind": self.kind,
            "config": None if self.config is None else self.config.to_dict(),
            "best_of": int(self.best_of),
        }

    def to_dict(self) -> dict:
        return {**self.identity(), "nfe": self.nfe, "preset": self.preset, "note": self.note,
                "ablation": self.ablation, "oracle": self.oracle}

    @classmethod
    def from_dict(cls, name: str, d: dict) -> "MethodSpec":
        """The method ``name`` as :meth:`to_dict` recorded it (bench.json's ``methods``)."""
        config_type = METHODS.get(d["kind"])
        cfg = None
        if config_type is not None:  # to_dict adds derived values (nfe, ...): keep the fields only
            names = {f.name for f in fields(config_type)}
            cfg = config_type(**{k: v for k, v in d["config"].items() if k in names})
        return cls(name, d["kind"], cfg, best_of=int(d.get("best_of", 1)), preset=d.get("preset"),
                   note=d.get("note", ""), ablation=bool(d.get("ablation", False)))

    def matches_record(self, recorded: dict) -> bool:
        """Whether this method has the identity of ``recorded`` (its :meth:`to_dict` in an
        earlier run's bench.json): the same results, so that run's images may be kept."""
        return _recorded_identity(recorded) == _json_roundtrip(self.identity())

    def settings_text(self) -> str:
        """The method's settings in words (the summary's table of methods)."""
        if not self.restores:
            return "-"
        text = _SETTINGS_TEXT[type(self.config)](self.config)
        if self.best_of > 1:
            text += f", best of {self.best_of}"
        return text


def _g(v: float) -> str:
    return f"{v:g}"


def _odedit_settings_text(c: ODEditConfig) -> str:
    if c.total_langevin_steps == 0:
        text = f"steps={c.steps}, no Langevin"
    else:
        text = (f"steps={c.steps}, levels={','.join(map(str, c.levels))}, K={c.langevin_steps}/level "
                f"({c.total_langevin_steps} total), eps={_g(c.step_size)}, T={_g(c.temperature)}")
    if c.invert_to is not None:
        text += f", invert_to={c.invert_to}"
    if c.clip_inversion_x0:
        text += ", x0 clipping in inversion"
    if c.decode_threshold:
        text += f", decode threshold {_g(c.decode_threshold)}"
    return text


def _sdedit_settings_text(c: SDEditConfig) -> str:
    text = f"steps={c.steps}, strength={_g(c.strength)}, eta={_g(c.eta)}, t0={sdedit_start_timestep(c)}"
    if c.calls is not None:
        text += f", {c.calls} evenly spaced timesteps"
    return text


# Per config type (the keys of odedit.restorers.ALGORITHMS): its settings in words.
_SETTINGS_TEXT = {ODEditConfig: _odedit_settings_text, SDEditConfig: _sdedit_settings_text}

# Config fields added later, with the values runs recorded before them used (per config type).
_CONFIG_DEFAULTS = {ODEditConfig: {"solver": "ddim", "inversion_iters": 0}}


def _recorded_identity(d: dict) -> dict:
    ident = {k: d.get(k) for k in ("kind", "config", "best_of")}
    if isinstance(ident["config"], dict):  # runs recorded before a field existed used its default
        ident["config"] = {**_CONFIG_DEFAULTS.get(METHODS.get(ident["kind"]), {}), **ident["config"]}
    return _json_roundtrip(ident)


def _json_roundtrip(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _canonical_nolangevin(cfg: ODEditConfig) -> ODEditConfig:
    """Without Langevin, levels/step size/temperature do not matter: fix them (to the paper's
    values, not the library's defaults, so stored runs keep their identity when a default moves)."""
    return replace(cfg, levels=(0,), langevin_steps=0, step_size=PAPER_STEP_SIZE, temperature=PAPER_TEMPERATURE)


def odedit_method_name(preset: str, cfg: ODEditConfig) -> str:
    """``odedit-<preset>`` plus one suffix per setting that differs from the preset's.

    Suffixes (in this order): ``steps<N>`` (grid size != the preset's, 100 for the paper's
    presets), ``top<L>`` (inversion
    level), ``lv<a-b-..>`` (Langevin levels != the paper's levels scaled to the grid),
    ``k<K>`` (updates per level != preset total / number of levels), ``eps<e>``,
    ``T<t>``, ``clip`` (x0 clipping in inversion), ``thr<p>`` (decode thresholding),
    ``dpmpp2m`` (solver, when not the preset's), ``fp<J>`` (fixed-point inversion iterations).
    Without Langevin (K = 0) the name is ``odedit-nolangevin`` (+ the grid suffixes).
    """
    # The reference is the preset's own definition (its paper values for light/medium/heavy,
    # never the library's current defaults, so a changed default never renames stored runs).
    # Without Langevin no preset is left: the paper's grid and solver are the reference.
    own = PRESET_SETTINGS.get(preset, {}) if cfg.total_langevin_steps else {}
    ref_steps = own.get("steps", PAPER_STEPS)
    ref_eps = own.get("step_size", PAPER_STEP_SIZE)
    ref_t = own.get("temperature", PAPER_TEMPERATURE)
    ref_solver = own.get("solver", "ddim")
    parts = []
    if cfg.total_langevin_steps == 0:
        parts.append("odedit-nolangevin")
    else:
        parts.append(f"odedit-{preset}")
    if cfg.steps != ref_steps:
        parts.append(f"steps{cfg.steps}")
    if cfg.invert_to is not None and cfg.invert_to != cfg.steps - 1:
        parts.append(f"top{cfg.invert_to}")
    if cfg.total_langevin_steps > 0:
        if tuple(cfg.levels) != tuple(scaled_levels(cfg.steps)):
            parts.append("lv" + "-".join(str(lv) for lv in cfg.levels))
        if cfg.langevin_steps != PRESETS[preset] // len(cfg.levels):
            parts.append(f"k{cfg.langevin_steps}")
        if cfg.step_size != ref_eps:
            parts.append(f"eps{_g(cfg.step_size)}")
        if cfg.temperature != ref_t:
            parts.append(f"T{_g(cfg.temperature)}")
    if cfg.clip_inversion_x0:
        parts.append("clip")
    if cfg.decode_threshold:
        parts.append(f"thr{_g(cfg.decode_threshold)}")
    if cfg.solver != ref_solver:
        parts.append(cfg.solver.replace("+", "p"))  # dpm++2m -> dpmpp2m (file-name safe)
    if cfg.inversion_iters:
        parts.append(f"fp{cfg.inversion_iters}")
    return "-".join(parts)


def sdedit_method_name(cfg: SDEditConfig, matched: bool = False) -> str:
    """``sdedit-<strength>`` (+ ``steps<N>`` if != 100, ``eta<e>`` if != 1); an
    NFE-matched variant is ``sdedit-<strength>-nfe<NFE>`` (its steps follow from the NFE)."""
    parts = [f"sdedit-{_g(cfg.strength)}"]
    if matched:
        parts.append(f"nfe{cfg.nfe}")
    elif cfg.steps != PAPER_STEPS:
        parts.append(f"steps{cfg.steps}")
    if cfg.eta != 1.0:
        parts.append(f"eta{_g(cfg.eta)}")
    return "-".join(parts)


def sdedit_nfe_matched(nfe: int, strength: float, eta: float = 1.0,
                       num_train_timesteps: int = 1000) -> SDEditConfig:
    """SDEdit at ``strength`` (same start t0 as the plain method) with ``nfe`` model calls.

    The reverse path is ``nfe`` evenly spaced timesteps from t0 to 0 (``SDEditConfig.calls``),
    capped at t0 + 1 calls (every timestep once): e.g. strength 0.3 starts at t0 = 290 and
    can make at most 291 calls.
    """
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    plain = SDEditConfig(strength=strength, eta=eta)
    t0 = sdedit_start_timestep(plain, num_train_timesteps)
    return replace(plain, calls=min(int(nfe), t0 + 1))


def sdedit_start_timestep(cfg: SDEditConfig, num_train_timesteps: int = 1000) -> int:
    """The training timestep SDEdit starts from (its effective noise level)."""
    return cfg.timesteps(num_train_timesteps)[0]


def _odedit_config(preset: str, overrides: dict) -> ODEditConfig:
    cfg = ODEditConfig.from_preset(preset, **overrides)
    return _canonical_nolangevin(cfg) if cfg.total_langevin_steps == 0 else cfg


def _add(out: dict, spec: MethodSpec) -> None:
    old = out.get(spec.name)
    if old is None:
        out[spec.name] = spec
    elif old.identity() != spec.identity():  # pragma: no cover - names encode the settings
        raise BenchError(f"two different methods would be named {spec.name!r}")


def ablation_methods(
    preset: str,
    overrides: dict,
    strengths: Sequence[float],
    eta: float = 1.0,
) -> list[MethodSpec]:
    """The standard ablation set around ODEdit ``preset`` (with ``overrides``):

    - no Langevin (``odedit-nolangevin``: invert then decode, K = 0);
    - Langevin only at the lowest level (levels = (0,), same total updates);
    - all four levels = the base method itself;
    - step sizes 1e-6 / 1e-5 / 1e-4;
    - x0 clipping in inversion toggled;
    - SDEdit at each strength with the base's NFE (:func:`sdedit_nfe_matched`).
    """
    base = _odedit_config(preset, overrides)
    out: dict[str, MethodSpec] = {}

    def od(cfg: ODEditConfig, note: str) -> None:
        cfg = _canonical_nolangevin(cfg) if cfg.total_langevin_steps == 0 else cfg
        _add(out, MethodSpec(odedit_method_name(preset, cfg), cfg.method, cfg, preset=preset, note=note, ablation=True))

    od(base, "ablation base: Langevin at all levels")
    od(replace(base, langevin_steps=0), "ablation: invert then decode, no Langevin")
    lv0 = {**overrides, "levels": (0,), "langevin_steps": base.total_langevin_steps}
    od(_odedit_config(preset, lv0), "ablation: Langevin only at the lowest level (same total updates)")
    for eps in ABLATION_STEP_SIZES:
        od(replace(base, step_size=eps), f"ablation: step size {_g(eps)}")
    od(replace(base, clip_inversion_x0=not base.clip_inversion_x0),
       f"ablation: x0 clipping in inversion {'on' if not base.clip_inversion_x0 else 'off'}")
    base_name = odedit_method_name(preset, base)
    for s in strengths:
        cfg = sdedit_nfe_matched(base.nfe, s, eta)
        t0 = sdedit_start_timestep(cfg)
        note = f"NFE matched to {base_name} ({base.nfe}): NFE={cfg.nfe}, starts at t0={t0}"
        if cfg.nfe != base.nfe:
            note += f" (capped at t0 + 1 = {t0 + 1} calls)"
        _add(out, MethodSpec(sdedit_method_name(cfg, matched=True), cfg.method, cfg, note=note, ablation=True))
    return list(out.values())


def build_methods(
    methods: Sequence[str] = METHOD_KINDS,
    presets: Optional[Sequence[str]] = None,
    odedit_overrides: Optional[dict] = None,
    step_sizes: Optional[Sequence[float]] = None,
    strengths: Sequence[float] = (0.5,),
    sdedit_steps: Optional[int] = None,
    eta: float = 1.0,
    ablations: bool = False,
    match_nfe: bool = False,
    best_of: int = 1,
) -> list[MethodSpec]:
    """The ordered, de-duplicated list of methods a benchmark evaluates.

    Args:
        methods: kinds to run: ``source``, ``odedit``, ``sdedit``.
        presets: ODEdit presets; each with every value of ``step_sizes`` (None or empty: restore's
            default preset, :data:`odedit.restorers.DEFAULT_PRESET`).
        odedit_overrides: ODEditConfig.from_preset overrides (steps, levels,
            langevin_steps, temperature, invert_to, clip_inversion_x0, decode_threshold).
        strengths: SDEdit strengths, each its own method.
        sdedit_steps: SDEdit grid size (default 100).
        ablations: add :func:`ablation_methods` of the first preset.
        match_nfe: add SDEdit at each strength with the NFE of each ODEdit preset.
        best_of: N > 1 adds an oracle variant (best PSNR of N against the clean image)
            of each stochastic method from presets/strengths (not of the ablations).
    """
    kinds = list(dict.fromkeys(methods))
    bad = [k for k in kinds if k not in METHOD_KINDS]
    if bad:
        raise BenchError(f"unknown method(s) {', '.join(bad)}; expected a subset of {','.join(METHOD_KINDS)}")
    if not kinds and not ablations:
        raise BenchError("no methods to evaluate")
    presets = list(dict.fromkeys(presets or [DEFAULT_PRESET]))
    for p in presets:
        if p not in PRESETS:
            raise BenchError(f"unknown preset {p!r}; expected one of {', '.join(PRESETS)}")
    overrides = {k: v for k, v in (odedit_overrides or {}).items() if v is not None and k != "step_size"}
    sizes = list(dict.fromkeys(step_sizes)) if step_sizes else [None]
    strengths = list(dict.fromkeys(float(s) for s in strengths))
    if not strengths and (SDEditConfig.method in kinds or ablations or match_nfe):
        raise BenchError("no SDEdit strengths given")
    out: dict[str, MethodSpec] = {}
    try:
        main = _main_methods(out, kinds, presets, overrides, sizes, strengths, sdedit_steps, eta)
        if ablations:
            for spec in ablation_methods(presets[0], {**overrides, "step_size": sizes[0]}, strengths, eta):
                _add(out, spec)
        if match_nfe:
            _add_nfe_matched(out, presets, {**overrides, "step_size": sizes[0]}, strengths, eta)
        if best_of > 1:
            _add_oracles(out, main, best_of)
    except (ValueError, TypeError) as err:
        if isinstance(err, BenchError):
            raise
        raise BenchError(str(err)) from None
    return list(out.values())


def _main_methods(out: dict, kinds: list[str], presets: list[str], overrides: dict, sizes: list,
                  strengths: list[float], sdedit_steps: Optional[int], eta: float) -> list[str]:
    """Add the source and the methods of ``kinds`` (each preset x step size, each strength) to
    ``out``; returns the names of the restoration methods added."""
    main: list[str] = []
    if SOURCE in kinds:
        _add(out, MethodSpec(SOURCE, SOURCE, note="the degraded image itself"))
    if ODEditConfig.method in kinds:
        for p in presets:
            for eps in sizes:
                cfg = _odedit_config(p, {**overrides, "step_size": eps})
                spec = MethodSpec(odedit_method_name(p, cfg), cfg.method, cfg, preset=p)
                _add(out, spec)
                main.append(spec.name)
    if SDEditConfig.method in kinds:
        for s in strengths:
            cfg = SDEditConfig(steps=sdedit_steps or PAPER_STEPS, strength=s, eta=eta)
            spec = MethodSpec(sdedit_method_name(cfg), cfg.method, cfg)
            _add(out, spec)
            main.append(spec.name)
    return main


def _add_nfe_matched(out: dict, presets: list[str], overrides: dict, strengths: list[float], eta: float) -> None:
    """Add SDEdit at each strength with the NFE of ODEdit at each preset (with ``overrides``)."""
    for p in presets:
        base = _odedit_config(p, overrides)
        for s in strengths:
            cfg = sdedit_nfe_matched(base.nfe, s, eta)
            note = (f"NFE matched to {odedit_method_name(p, base)} ({base.nfe}): "
                    f"NFE={cfg.nfe}, starts at t0={sdedit_start_timestep(cfg)}")
            _add(out, MethodSpec(sdedit_method_name(cfg, matched=True), cfg.method, cfg, note=note))


def _add_oracles(out: dict, names: list[str], best_of: int) -> None:
    """Add the best-of-``best_of`` oracle variant of each stochastic method of ``names``."""
    for name in names:
        spec = out[name]
        if spec.stochastic:
            _add(out, replace(
                spec, name=f"{name}-oracle-best{best_of}", best_of=int(best_of),
                note=f"oracle: best PSNR of {best_of} against the clean image",
            ))
