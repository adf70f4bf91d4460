"""A closed-form Gaussian face prior (low-rank PPCA) and its exact denoiser, eps_G(x_t, t).

Notation (DDPM / the ODEdit paper): ab = alpha_bar_t, sigma_t^2 = 1 - ab,
x_t = sqrt(ab) x0 + sigma_t eps, eps ~ N(0, I); D = C*H*W pixels in [-1, 1].

The base model of the data (probabilistic PCA, Tipping & Bishop 1999):

    x0 ~ N(mu, S),   S = U diag(lam) U^T + s2 (I - U U^T)

with U (D, k) orthonormal (the top-k principal directions of the training faces), lam (k,)
their variances and s2 the mean variance of the other D - k directions. Then
x_t ~ N(sqrt(ab) mu, ab S + sigma_t^2 I), and the exact posterior mean of the noise is

    1. r      = x_t - sqrt(ab) mu                      (the centred noisy image)
    2. c_perp = 1 / (ab s2 + sigma_t^2)                (inverse variance off the basis)
       d      = 1 / (ab lam + sigma_t^2)               (inverse variances on the basis)
    3. E[eps | x_t] = sigma_t [ c_perp r + U ((d - c_perp) * U^T r) ]

(Tweedie: E[eps | x_t] = -sigma_t grad log p_t(x_t), the score of eq. 9 times -sigma_t.)
With k = D this is the full-covariance Gaussian's denoiser. It costs two (B, D) x (D, k)
products, a few per cent of a UNet call at k <= 1024.

:func:`fit_ppca` fits (mu, U, lam, s2) to images with a randomized SVD of the centred data
(Halko et al. 2011, ``torch.svd_lowrank``): no D x D covariance is formed.
:class:`GaussianBase` holds the fitted tensors and reads/writes them as safetensors.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch

__all__ = ["GaussianBase", "fit_ppca", "gaussian_eps", "GAUSSIAN_DIR", "GAUSSIAN_FILE"]

# Inside a model folder: gaussian/gaussian.safetensors (+ gaussian/config.json).
GAUSSIAN_DIR = "gaussian"
GAUSSIAN_FILE = "gaussian.safetensors"
GAUSSIAN_CONFIG = "config.json"
PRECONDITIONS = ("none", "edm")
_KINDS = {"none": "ppca", "edm": "ppca-edm"}  # gaussian/config.json "kind" per preconditioning
_PRECONDITION_OF = {kind: pre for pre, kind in _KINDS.items()}


def gaussian_eps(
    x: torch.Tensor,
    alpha_bar: Union[float, torch.Tensor],
    mean: torch.Tensor,
    basis: torch.Tensor,
    eigvals: torch.Tensor,
    residual_var: Union[float, torch.Tensor],
) -> torch.Tensor:
    """E[eps | x_t] under the PPCA Gaussian (steps 1-3 of the module docstring).

    Args:
        x: (B, C, H, W) noisy images x_t, any float dtype; computed in float32 or wider.
        alpha_bar: ab of x_t: a Python float (one level for the batch) or a (B,) tensor.
        mean: (D,) mu, D = C*H*W, model space [-1, 1].
        basis: (D, k) U, orthonormal columns.
        eigvals: (k,) lam >= 0.
        residual_var: s2 >= 0, the variance off the basis.
    Returns:
        (B, C, H, W) eps estimate, x's dtype.
    """
    B = x.shape[0]
    work = torch.promote_types(x.dtype, torch.float32)
    xf = x.reshape(B, -1).to(work)
    wide = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
    ab = (alpha_bar.to(x.device, wide) if torch.is_tensor(alpha_bar)
          else torch.tensor(float(alpha_bar), dtype=wide, device=x.device))
    ab = ab.reshape(-1, 1) if ab.ndim else ab.reshape(1, 1)  # (B, 1) or (1, 1)
    sigma2 = 1.0 - ab
    r = xf - ab.sqrt().to(work) * mean.to(work)  # step 1
    c_perp = 1.0 / (ab * float(residual_var) + sigma2)  # step 2, (B|1, 1)
    d = 1.0 / (ab * eigvals.to(wide).reshape(1, -1) + sigma2)  # (B|1, k)
    U = basis.to(work)
    coef = (d - c_perp).to(work) * (r @ U)  # (B, k)
    eps = sigma2.sqrt().to(work) * (c_perp.to(work) * r + coef @ U.T)  # step 3
    return eps.reshape(x.shape).to(x.dtype)


@dataclass(eq=False)
class GaussianBase:
    """The fitted PPCA Gaussian (state only; the math is :func:`gaussian_eps`).

    Attributes:
        mean: (D,) float32, model space [-1, 1].
        basis: (D, k) float32 (stored fp16), orthonormal columns.
        eigvals: (k,) float32, descending.
        residual_var: s2, the variance of each of the other D - k directions.
        shape: (C, H, W) of the images.
        num_images: how many images (with mirror copies) the fit saw.
        precondition: how the network on top of this base sees its input and scales its output:
            ``none`` (eps = E_G + r_theta(x_t, t)) or ``edm`` (eps = E_G + c_out r_theta(c_in x_t, t),
            :mod:`odedit.precond`).
    """

    mean: torch.Tensor
    basis: torch.Tensor
    eigvals: torch.Tensor
    residual_var: float
    shape: tuple[int, int, int]
    num_images: int = 0
    precondition: str = "none"

    def __post_init__(self) -> None:
        if self.precondition not in PRECONDITIONS:
            raise ValueError(f"precondition must be one of {PRECONDITIONS}, got {self.precondition!r}")
        D = math.prod(self.shape)
        k = self.basis.shape[-1]
        if self.mean.shape != (D,) or self.basis.shape != (D, k) or self.eigvals.shape != (k,):
            raise ValueError(
                f"inconsistent Gaussian base: shape {self.shape} (D = {D}), mean {tuple(self.mean.shape)}, "
                f"basis {tuple(self.basis.shape)}, eigvals {tuple(self.eigvals.shape)}"
            )
        if not (math.isfinite(self.residual_var) and self.residual_var >= 0):
            raise ValueError(f"residual variance must be finite and >= 0, got {self.residual_var}")

    @property
    def rank(self) -> int:
        return int(self.basis.shape[-1])

    @classmethod
    def isotropic(cls, shape: tuple[int, int, int], var: float, precondition: str = "edm") -> "GaussianBase":
        """N(0, var I): rank 0, mean 0 (with ``edm`` and var = 0.5^2, EDM's own preconditioning)."""
        D = math.prod(shape)
        return cls(torch.zeros(D), torch.zeros(D, 0), torch.zeros(0), float(var), tuple(shape), 0, precondition)

    def scales(self, alpha_bar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(c_in, c_out) per level for ``edm`` (float64, alpha_bar's shape), None for ``none``."""
        if self.precondition == "none":
            return None
        from odedit.precond import edm_scales

        return edm_scales(alpha_bar, self.mean.cpu(), self.eigvals.cpu(), self.residual_var, self.mean.numel())

    def eps(self, x: torch.Tensor, alpha_bar: Union[float, torch.Tensor]) -> torch.Tensor:
        """E[eps | x_t]; see :func:`gaussian_eps` for shapes."""
        return gaussian_eps(x, alpha_bar, self.mean, self.basis, self.eigvals, self.residual_var)

    def as_stored(self) -> "GaussianBase":
        """This base with the precision of its file (basis rounded to fp16): what a loaded copy holds.

        A training run uses this from its first step, so a resumed run (which loads the file)
        computes exactly what an uninterrupted one does.
        """
        return GaussianBase(
            self.mean.float(), self.basis.to(torch.float16).float(), self.eigvals.float(),
            self.residual_var, self.shape, self.num_images, self.precondition,
        )

    def to(self, device: Union[torch.device, str]) -> "GaussianBase":
        return GaussianBase(
            self.mean.to(device), self.basis.to(device), self.eigvals.to(device),
            self.residual_var, self.shape, self.num_images, self.precondition,
        )

    def truncated(self, k: int) -> "GaussianBase":
        """The same fit with only the top k directions; the dropped variance joins s2."""
        if not 1 <= k <= self.rank:
            raise ValueError(f"rank must be in 1..{self.rank}, got {k}")
        D = self.mean.numel()
        total = float(self.eigvals.double().sum()) + self.residual_var * (D - self.rank)
        kept = float(self.eigvals[:k].double().sum())
        s2 = (total - kept) / (D - k) if D > k else 0.0
        return GaussianBase(
            self.mean, self.basis[:, :k], self.eigvals[:k], s2, self.shape, self.num_images, self.precondition
        )

    # ---- files -------------------------------------------------------------------------------

    def save(self, folder: Path) -> Path:
        """Write ``folder/gaussian.safetensors`` (basis in fp16) and ``folder/config.json``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            "mean": self.mean.float().contiguous().cpu(),
            "basis": self.basis.to(torch.float16).contiguous().cpu(),
            "eigvals": self.eigvals.float().contiguous().cpu(),
        }
        save_file(tensors, str(folder / GAUSSIAN_FILE))
        # The kind names the preconditioning: "ppca" (none; every folder written before it existed)
        # or "ppca-edm", which older odedit versions refuse instead of misreading it.
        cfg = dict(
            kind=_KINDS[self.precondition], rank=self.rank, residual_var=self.residual_var, shape=list(self.shape),
            num_images=self.num_images,
        )
        (folder / GAUSSIAN_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: Path) -> "GaussianBase":
        """Read what :meth:`save` wrote; ValueError (with the file named) on a malformed folder."""
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            cfg = json.loads((folder / GAUSSIAN_CONFIG).read_text())
            if not isinstance(cfg, dict) or cfg.get("kind") not in _PRECONDITION_OF:
                raise ValueError(f"expected a JSON object with kind 'ppca' or 'ppca-edm', got {str(cfg)[:80]}")
            t = load_file(str(folder / GAUSSIAN_FILE))
            # The basis as stored (fp16 values in float32): fp16 rounding moves U^T U from I by
            # ~1e-5, far below what matters, and save(load(f)) rewrites f bit for bit.
            return cls(
                t["mean"].float(), t["basis"].float(), t["eigvals"].float(), float(cfg["residual_var"]),
                tuple(int(s) for s in cfg["shape"]), int(cfg.get("num_images", 0)),
                _PRECONDITION_OF[cfg["kind"]],
            )
        except (OSError, KeyError, TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"cannot read the Gaussian base in {folder}: {type(err).__name__}: {err}") from err


def fit_ppca(
    images: torch.Tensor,
    rank: int,
    generator: torch.Generator | None = None,
    oversample: int = 32,
    power_iters: int = 3,
    chunk: int = 4096,
) -> GaussianBase:
    """Fit the PPCA Gaussian of the module docstring to ``images``.

    Args:
        images: (N, C, H, W) float, model space [-1, 1] (e.g. the training faces, with their
            mirror images to make the fit left-right symmetric).
        rank: k, the number of principal directions kept (1 <= k < min(N, D)).
        generator: seeds the randomized SVD's test matrix (the fit is then reproducible).
        oversample, power_iters: randomized SVD accuracy (Halko et al. 2011, sec. 4).
        chunk: images per block when centring (bounds the extra memory).
    Returns:
        a :class:`GaussianBase` with eigenvalues = squared singular values / (N - 1) and
        s2 = (total variance - sum of the kept eigenvalues) / (D - k).
    """
    N = images.shape[0]
    shape = tuple(int(s) for s in images.shape[1:])
    D = math.prod(shape)
    if not 1 <= rank < min(N, D):
        raise ValueError(f"rank must be in 1..{min(N, D) - 1} for {N} images of {D} pixels, got {rank}")
    X = images.reshape(N, D).float()
    mean = X.mean(0, dtype=torch.float64).float()
    Xc = torch.empty_like(X)
    total = 0.0
    for i in range(0, N, chunk):
        Xc[i : i + chunk] = X[i : i + chunk] - mean
        total += float(Xc[i : i + chunk].double().square().sum())
    total /= N - 1
    q = min(rank + oversample, min(N, D))
    # Randomized range finder + SVD (torch.svd_lowrank's algorithm), with our own generator.
    omega = torch.randn(D, q, generator=generator, dtype=torch.float32)
    Y = Xc @ omega
    for _ in range(power_iters):
        Y, _ = torch.linalg.qr(Y)
        Z, _ = torch.linalg.qr(Xc.T @ Y)
        Y = Xc @ Z
    Qm, _ = torch.linalg.qr(Y)  # (N, q): the range of Xc
    Bm = Qm.T @ Xc  # (q, D)
    _, S, Vh = torch.linalg.svd(Bm, full_matrices=False)
    eig = S[:rank].double().square() / (N - 1)
    basis = Vh[:rank].T.contiguous()
    s2 = max(total - float(eig.sum()), 0.0) / (D - rank)
    return GaussianBase(mean, basis, eig.float(), s2, shape, N)
