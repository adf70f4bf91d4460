"""Model adapters: every outside model is translated to one contract, ``eps(x, t)``.

The contract (:class:`EpsModel`)::

    eps = model(x, t)     x: float tensor (B, C, H, W), roughly unit scale, any device
                          t: int, a training timestep 0..T-1 of ``model.schedule``
                          eps: same shape, dtype and device as x

plus the attributes ``schedule`` (:class:`~odedit.schedule.NoiseSchedule`),
``sample_size`` (H = W the model was trained at) and ``in_channels``.

Diffusers ``UNet2DModel`` checkpoints predicting ``epsilon``, ``v_prediction`` or
``sample`` (x0) are wrapped by :class:`UNetEps`; nothing outside this module knows
about prediction types. :func:`load_model` reads a local ``save_pretrained`` folder,
the embedded default prior, or a Hugging Face hub id.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from odedit.gaussian import GAUSSIAN_DIR, GaussianBase
from odedit.schedule import NoiseSchedule, v_to_eps, x0_to_eps

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

# The embedded default face prior (64x64 CelebA), shipped inside the package.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "weights" / "celeba64"
DEFAULT_MODEL_NAME = "odedit-celeba64 (embedded)"
CHECKSUM_FILE = "checksums.json"


# diffusers' from_pretrained builds models inside accelerate's init_empty_weights(), which
# monkeypatches nn.Module.register_parameter process-wide. Two threads loading at once can
# interleave enter/exit and leave the patch installed, so that every model built afterwards
# lives on the meta device. Loads are therefore serialised.
_LOAD_LOCK = threading.Lock()


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says which and what to do."""


@runtime_checkable
class EpsModel(Protocol):
    schedule: NoiseSchedule
    sample_size: int
    in_channels: int

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor: ...


@dataclass(eq=False)
class UNetEps:
    """A diffusers ``UNet2DModel`` seen through the ``eps(x, t)`` contract.

    Args:
        unet: the network; its parameters' dtype is the compute dtype (float32, bf16, fp16).
        schedule: the training noise schedule the network was trained with.
        prediction_type: ``epsilon`` | ``v_prediction`` | ``sample`` (what the net outputs).
    """

    unet: torch.nn.Module
    schedule: NoiseSchedule
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"unsupported prediction_type {self.prediction_type!r}; expected one of {PREDICTION_TYPES}"
            )

    @property
    def sample_size(self) -> int:
        size = self.unet.config.sample_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        # Built on x's device: no host-device transfer or sync.
        timesteps = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        out = self.unet(x.to(self.dtype), timesteps, return_dict=False)[0].to(x.dtype)
        if out.shape[1] == 2 * x.shape[1]:
            out = out[:, : x.shape[1]]  # learned-variance models: first half is the mean output
        if self.prediction_type == "epsilon":
            return out
        ab = self.schedule.alpha_bar_at(int(t))
        if self.prediction_type == "v_prediction":
            return v_to_eps(x, out, ab)
        return x0_to_eps(x, out, ab)


@dataclass(eq=False)
class GaussianResidualEps:
    """A face prior whose denoiser is a closed-form Gaussian plus a learned residual.

        eps(x, t) = E_G[eps | x_t] + r_theta(x_t, t)                      (precondition none)
        eps(x, t) = E_G[eps | x_t] + c_out(t) r_theta(c_in(t) x_t, t)     (precondition edm)

    ``base`` is the PPCA Gaussian of the training faces (:mod:`odedit.gaussian`, exact posterior
    mean of the noise, or EDM's isotropic N(0, 0.5^2 I)); ``net`` is the network that learned what
    the Gaussian misses. The scales c_in, c_out (:mod:`odedit.precond`) come from the base's
    ``precondition``. With a zero network this is the Gaussian's own denoiser. Model folders with a
    ``gaussian/`` sub-folder load as this; the eps contract is unchanged.
    """

    net: UNetEps
    base: GaussianBase

    def __post_init__(self) -> None:
        if self.net.prediction_type != "epsilon":
            raise ValueError(
                f"a Gaussian-residual network must predict epsilon, got {self.net.prediction_type!r}"
            )
        want = (self.net.in_channels, self.net.sample_size, self.net.sample_size)
        if tuple(self.base.shape) != want:
            raise ValueError(f"the Gaussian base is for images {tuple(self.base.shape)}, the network for {want}")
        scales = self.base.scales(self.net.schedule.alpha_bar)
        # Python floats per level: no tensor indexing (and no host-device sync) per call.
        self._scales = None if scales is None else (scales[0].tolist(), scales[1].tolist())

    schedule = property(lambda self: self.net.schedule)
    sample_size = property(lambda self: self.net.sample_size)
    in_channels = property(lambda self: self.net.in_channels)
    unet = property(lambda self: self.net.unet)
    prediction_type = property(lambda self: self.net.prediction_type)
    device = property(lambda self: self.net.device)
    dtype = property(lambda self: self.net.dtype)

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        t = int(t)
        base = self.base.eps(x, self.net.schedule.alpha_bar_at(t))  # float32 whatever the net's dtype
        if self._scales is None:
            return base + self.net(x, t)
        c_in, c_out = self._scales
        return base + c_out[t] * self.net(x * c_in[t], t)


def compile_model(model):
    """The same model with its network wrapped in ``torch.compile`` (an opt-in speed-up).

    Measured on the shipped prior, fp32, batch 16, 2 AVX2 cores (docs/performance.md): 53.2 ms
    per image-call against 60.5 uncompiled (1.14x), outputs within 5e-6; ``--preset fast`` 3.63 s
    per face against 4.12 s in the same run (1.13x). The first call compiles for ~11-15 s (and a
    new batch size may compile once more), so it pays off from ~30 faces, not for one photo.
    Needs a working C++ compiler on CPU (inductor). The eps contract is unchanged.
    """
    if isinstance(model, GaussianResidualEps):
        return GaussianResidualEps(compile_model(model.net), model.base)
    compiled = torch.compile(model.unet, dynamic=None)
    return UNetEps(compiled, model.schedule, model.prediction_type)


# ---- checksums of shipped weights --------------------------------------------------------


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(model_dir: Path) -> dict[str, str]:
    """Write ``checksums.json`` (relative path -> sha256) for every file under model_dir."""
    model_dir = Path(model_dir)
    sums = {
        p.relative_to(model_dir).as_posix(): file_sha256(p)
        for p in sorted(model_dir.rglob("*"))
        if p.is_file() and p.name != CHECKSUM_FILE
    }
    (model_dir / CHECKSUM_FILE).write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n")
    return sums


def verify_checksums(model_dir: Path) -> None:
    """Check every file listed in ``checksums.json``; raise ModelLoadError on a mismatch."""
    model_dir = Path(model_dir)
    listing = model_dir / CHECKSUM_FILE
    if not listing.is_file():
        return
    try:
        sums = json.loads(listing.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelLoadError(f"cannot read {listing}: {_one_line(err)}; reinstall or re-export the model") from None
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
        raise ModelLoadError(f"{listing} is not a JSON object of file -> sha256; reinstall or re-export the model")
    for rel, expected in sums.items():
        path = model_dir / rel
        if not path.is_file():
            raise ModelLoadError(f"model file {path} is missing (listed in {listing})")
        if file_sha256(path) != expected:
            raise ModelLoadError(
                f"model file {path} is corrupt or truncated (sha256 mismatch with {listing}); "
                "reinstall odedit or re-download the model"
            )


# ---- loading --------------------------------------------------------------------------------


def _find_layout(root: Path) -> tuple[Path, Path]:
    """Return (unet_dir, scheduler_config_path) for a pipeline or a bare-UNet folder."""
    if (root / "unet" / "config.json").is_file():
        unet_dir = root / "unet"
    elif (root / "config.json").is_file():
        unet_dir = root
    else:
        raise ModelLoadError(
            f"{root} does not look like a diffusers model folder: expected unet/config.json or config.json"
        )
    for candidate in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json"):
        if candidate.is_file():
            return unet_dir, candidate
    raise ModelLoadError(
        f"{root} has no scheduler config (scheduler/scheduler_config.json or scheduler_config.json): "
        "the noise schedule the model was trained with is needed"
    )


MAX_TRAIN_TIMESTEPS = 100_000  # far above any diffusion model's T (1000 is usual); bounds memory


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_scheduler_config(path: Path) -> dict:
    """The scheduler config at ``path``, checked: a JSON object from which a valid noise schedule
    and a known prediction type follow. Every defect is a one-line ModelLoadError naming the file,
    raised before the (large) weights are read."""
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelLoadError(f"cannot read scheduler config {path}: {_one_line(err)}") from None
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"scheduler config {path} is not a JSON object (got {type(cfg).__name__})")
    steps = cfg.get("num_train_timesteps", 1000)
    whole = isinstance(steps, int) or (isinstance(steps, float) and steps.is_integer())
    if isinstance(steps, bool) or not whole or not 1 <= steps <= MAX_TRAIN_TIMESTEPS:
        raise ModelLoadError(
            f"scheduler config {path}: num_train_timesteps must be an integer in [1, {MAX_TRAIN_TIMESTEPS}], "
            f"got {steps!r}"
        )
    betas = cfg.get("trained_betas")
    if betas is not None and (not isinstance(betas, list) or not 1 <= len(betas) <= MAX_TRAIN_TIMESTEPS):
        raise ModelLoadError(f"scheduler config {path}: trained_betas must be a list of 1 to {MAX_TRAIN_TIMESTEPS} numbers")
    prediction_type = cfg.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ModelLoadError(
            f"scheduler config {path}: prediction_type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}"
        )
    try:
        NoiseSchedule.from_scheduler_config(cfg)
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        raise ModelLoadError(f"scheduler config {path} does not give a valid noise schedule: {_one_line(err)}") from None
    return cfg


def load_local(
    root: Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> UNetEps:
    """Load a diffusers UNet2DModel + scheduler config from a local folder."""
    from diffusers import UNet2DModel

    root = Path(root)
    verify_checksums(root)
    unet_dir, sched_path = _find_layout(root)
    sched_cfg = read_scheduler_config(sched_path)
    try:
        with _LOAD_LOCK:
            unet = UNet2DModel.from_pretrained(unet_dir, torch_dtype=dtype)
    except Exception as err:  # diffusers raises many types; re-raise with the model named
        raise ModelLoadError(f"cannot load UNet2DModel from {unet_dir}: {err}") from err
    unet = unet.to(device).eval().requires_grad_(False)
    prediction_type = sched_cfg.get("prediction_type", "epsilon")
    model = UNetEps(unet, NoiseSchedule.from_scheduler_config(sched_cfg), prediction_type)
    gauss_dir = root / GAUSSIAN_DIR
    if not gauss_dir.is_dir():
        return model  # a plain diffusers model
    try:
        return GaussianResidualEps(model, GaussianBase.load(gauss_dir).to(device))
    except ValueError as err:
        raise ModelLoadError(f"model {root}: {err}") from err


def _download(repo_id: str) -> Path:
    """Fetch a hub snapshot (UNet + scheduler files only) to the local cache."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "unet/*", "scheduler/*", "diffusion_pytorch_model.bin"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:  # offline, unknown repo, auth, ... : one clear message
        raise ModelLoadError(
            f"could not download model {repo_id!r} from the Hugging Face hub ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no details'}). If you are offline, pass a "
            "local folder instead: --model /path/to/model (a diffusers save_pretrained folder, e.g. "
            "one written by `odedit train`)"
        ) from err


def default_model_available() -> bool:
    return (DEFAULT_MODEL_DIR / "unet" / "config.json").is_file() or (
        DEFAULT_MODEL_DIR / "config.json"
    ).is_file()


def load_model(
    source: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> UNetEps:
    """Load a model through the eps contract.

    Args:
        source: None for the embedded default face prior; a local folder; or a hub id
            such as ``google/ddpm-ema-celebahq-256``.
        device, dtype: where and in which precision the network runs.
    """
    if source is None:
        if not default_model_available():
            raise ModelLoadError(
                "this installation of odedit ships no embedded default face prior yet (it has not "
                "been trained and published); pass a model with --model PATH_OR_HUB_ID, e.g. a folder "
                "written by `odedit train` or the hub id google/ddpm-ema-celebahq-256"
            )
        if not (DEFAULT_MODEL_DIR / CHECKSUM_FILE).is_file():
            raise ModelLoadError(
                f"the embedded default prior in {DEFAULT_MODEL_DIR} has no {CHECKSUM_FILE}; "
                "reinstall odedit (the shipped weights are always checksummed)"
            )
        return load_local(DEFAULT_MODEL_DIR, device, dtype)
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"--model {str(source)!r} is a file; expected a model folder or hub id")
        return load_local(path, device, dtype)
    text = str(source)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise ModelLoadError(
            f"model {text!r} is neither an existing folder nor a hub id of the form owner/name"
        )
    return load_local(_download(text), device, dtype)


def model_identity(source: str | os.PathLike | None) -> str:
    """A printable id for the JSON sidecar: the hub id, absolute path or the default's name."""
    if source is None:
        return DEFAULT_MODEL_NAME
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else str(source)
