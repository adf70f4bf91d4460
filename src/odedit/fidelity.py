"""What a pasted face keeps of the input: detail finer than the prior can see, and colour.

The prior restores a face in a small model frame (64 px). Pasted into a photo where the face
spans k = 1 / scale photo pixels per frame pixel (k > 1: the face is larger than the frame),
the restoration can only be right up to the frame's resolution: everything finer comes from
the upsampler (Lanczos invents none, Real-ESRGAN invents some). The input, though, may hold
that fine detail itself (a sharp photo, a mild blur or JPEG), or only noise there.

This module splits the photo-space face region into two bands at the frame's resolution and
keeps the input's fine band where it is signal rather than noise (CodeFormer's fidelity
weight w plays the same role, there in feature space):

    L(x)      = x resized down by k and back up (antialiased bicubic): the band the frame holds
    D(x)      = x - L(x): the band finer than the frame
    sigma     = the input's noise level (Donoho's MAD of the finest Haar diagonal band, plus impulses
                and lines of one colour),
                less the estimator's noise-free floor: sqrt(sigma_raw^2 - NOISE_FLOOR^2)
    beta      = the share of white noise's variance that falls in D (measured on a noise field)
    G(p)      = w * clip(1 - m beta sigma^2 / var_local(D(P))(p), 0, 1)   (a local Wiener gain;
                m = NOISE_MARGIN over-subtracts a little: the local variance is itself noisy)
    F         = R + G * (D(P) - D(R))                                    (R: the restored region)

That is the rule with ``low_band='off'``. With the gates on (:func:`keep_input`), the coarse band
keeps the share H = 1 - w (1 - h) of the change L(R) - L(P), and the fine band's gain becomes
G = w (1 - min(1 - g, h_f)), g the Wiener gain above without w, h_f the share of the fine-band
change D(R) - D(P) that the input's fine-band noise (sqrt(beta) sigma) explains
(:func:`restoration_share` on either band).

With w = 0 the pasted face is the upsampler's (today's behaviour); with w = 1 and a clean
input the input's fine band replaces the upsampler's, so detail the photo had is not thrown
away; with a noisy input G falls towards 0 where the fine band is mostly noise.

Colour (``match_colour``): the paper names colour as ODEdit's weakness. The restored region's
per-channel mean over the face mask is moved to the input's, which undoes a colour drift of
the prior and leaves the face's structure alone.

Shapes: regions are (h, w, 3) float32 in 0..255 (photo space, one face's bounding box);
masks are (h, w) float32 in [0, 1]. Pure NumPy/torch functions; nothing here clips.
"""

from __future__ import annotations

import math

import functools

import numpy as np

# Defaults chosen by benchmarks/bench_whole_photo.py (docs/faces.md, "Whole-photo benchmark").
DEFAULT_FIDELITY = 1.0
DEFAULT_MATCH_COLOUR = True
_MAD_TO_SIGMA = 1.0 / 0.6745  # median |N(0, 1)| = 0.6745
NOISE_MARGIN = 1.5  # chosen on the whole-photo benchmark between 1 (plain Wiener) and 2
# noise_sigma's Donoho estimate moves in steps of 0.74 grey levels (median |HH| of 8-bit pixels is
# a multiple of 0.5): its first two readings, 0.74 and 1.48, are what quantisation and fine texture
# give on noise-free photos (blurred and JPEG faces of the whole-photo benchmark read 0-2.2), and
# noise that weak is invisible. keep_input treats sigma as sqrt(sigma^2 - NOISE_FLOOR^2): with it
# a blurred 128 px photo no longer loses 0.1-0.5 dB of face PSNR to a gate that read its texture as
# noise (session 17: blur 1 32.20 -> 32.35 dB = the input, JPEG 1 30.06 -> 30.05 = the input, clean
# 47.9 -> 62.9 dB; noise 1/5 and masks unchanged; aligned crops of Table 1 unchanged).
NOISE_FLOOR = 1.5


def lowpass(region: np.ndarray, factor: float) -> np.ndarray:
    """L(x): ``region`` resized down by ``factor`` (antialiased) and back up, bicubic.

    Args:
        region: (h, w, C) float, any range.
        factor: photo pixels per frame pixel (> 1 to have any effect).
    Returns:
        (h, w, C) float32; ``region`` itself (as float32) when ``factor <= 1``.
    """
    import torch
    import torch.nn.functional as F

    x = np.asarray(region, dtype=np.float32)
    if factor <= 1.0:
        return x.copy()
    h, w = x.shape[:2]
    nh, nw = max(1, int(round(h / factor))), max(1, int(round(w / factor)))
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]
    small = F.interpolate(t, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    back = F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)
    return back[0].permute(1, 2, 0).numpy()


def above_floor(sigma: float, floor: float = NOISE_FLOOR) -> float:
    """sqrt(max(sigma^2 - floor^2, 0)): the noise a reading of ``sigma`` grey levels holds above the
    estimator's noise-free floor (:data:`NOISE_FLOOR`)."""
    if floor < 0:
        raise ValueError(f"noise floor must be >= 0, got {floor}")
    return float(np.sqrt(max(float(sigma) ** 2 - float(floor) ** 2, 0.0)))


def noise_sigma(region: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Noise standard deviation of ``region`` (h, w, C) in grey levels (0..255): Donoho's estimator
    plus salt-and-pepper impulses.

    1. Donoho: the finest diagonal Haar band, HH = (a - b - c + d) / 2 over 2x2 blocks, of each
       channel; s_g = median(|HH|) / 0.6745 over the blocks where ``mask`` > 0.5 (all when None).
       Natural images have little energy in HH, white noise of std s gives HH of std s.
    2. The median ignores sparse outliers by design, so impulse noise (channel values thrown to
       0 or 255) reads as almost clean. Its variance is added: v_i = the sum of (x - median3x3(x))^2
       over the values at the range's ends that jump more than ``IMPULSE_MIN_JUMP`` from their
       3x3 median and have at most ``IMPULSE_MAX_TWINS`` of their 8 neighbours at the same end,
       divided by the number of values (in the mask); 0 when under ``IMPULSE_MIN_SHARE`` of the
       values are such impulses. sigma = sqrt(s_g^2 + v_i).
       Measured on 300 degraded val faces: impulse noise at severity 4 reads 15 instead of ~60
       without step 2; clean portraits move by at most 0.3 (docs/faces.md).
    3. Lines (a scratch, the masking corruption's vertical lines: a column or row of one colour
       across the region) cancel in HH too, whatever their contrast: :func:`line_variance` v_l is
       added. sigma = sqrt(s_g^2 + v_i + v_l).
    """
    x = np.asarray(region, dtype=np.float64)
    h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    if h < 2 or w < 2:
        return 0.0
    keep_px = None if mask is None else np.asarray(mask, dtype=np.float64) > 0.5
    xc = x[:h, :w]
    hh = (xc[0::2, 0::2] - xc[0::2, 1::2] - xc[1::2, 0::2] + xc[1::2, 1::2]) / 2.0
    if keep_px is not None:
        keep = keep_px[:h, :w][0::2, 0::2]
        if keep.sum() < 16:
            keep, keep_px = np.ones_like(keep), None
        hh = hh[keep]
    sigma = float(np.median(np.abs(hh)) * _MAD_TO_SIGMA)
    extra = impulse_variance(x, keep_px) + line_variance(x, keep_px)
    return sigma if extra == 0.0 else math.sqrt(sigma * sigma + extra)


# A salt-and-pepper value jumps at least this far (grey levels) from its 3x3 median; a saturated
# highlight or shadow wider than a few pixels does not (its median is saturated too).
IMPULSE_MIN_JUMP = 50.0
IMPULSE_MAX_TWINS = 2
# Impulses count as noise only when at least this share of the values are impulses (ImageNet-C's
# impulse_noise hits 3-27 % of them; a clean 64 px face crop has a handful: a pupil, an eyelash).
IMPULSE_MIN_SHARE = 0.005


def impulse_variance(region: np.ndarray, mask: np.ndarray | None = None) -> float:
    """v_i of :func:`noise_sigma`: the variance that salt-and-pepper impulses add to ``region``
    ((h, w, C) grey levels, 0..255), over the pixels where ``mask`` (h, w) bool is True (all when
    None). 0.0 exactly when no value sits at 0 or 255 (the median filter is then not run) or when
    the impulses are too few to be noise."""
    from scipy.ndimage import convolve, median_filter

    x = np.asarray(region, dtype=np.float64)
    ends = (x <= 0.5) | (x >= 254.5)
    if mask is not None:
        ends &= mask[..., None]
    if not ends.any():
        return 0.0
    jump = x - median_filter(x, size=(3, 3, 1), mode="nearest")
    # isolated: at most IMPULSE_MAX_TWINS of the 8 neighbours share the value (a saturated area's
    # corner or staircase edge has 3 or more; impulses at ImageNet-C's densities rarely do)
    ring = np.ones((3, 3, 1))
    ring[1, 1, 0] = 0.0
    twins = np.where(x >= 254.5, convolve((x >= 254.5).astype(np.float64), ring, mode="constant"),
                     convolve((x <= 0.5).astype(np.float64), ring, mode="constant"))
    impulse = ends & (np.abs(jump) > IMPULSE_MIN_JUMP) & (twins <= IMPULSE_MAX_TWINS)
    count = x.size if mask is None else int(mask.sum()) * x.shape[2]
    if impulse.sum() < IMPULSE_MIN_SHARE * count:  # a few black or white specks: features, not noise
        return 0.0
    return float((jump[impulse] ** 2).sum() / max(count, 1))


# A line is a column (or row) whose values stay within LINE_MAX_STD grey levels of their mean over
# at least LINE_MIN_LENGTH pixels of the region (in the mask): one colour across a face, which a
# photographed face never has (it runs through hair, skin, eyes and background). Not lines: a run of
# more than LINE_MAX_RUN such columns side by side (a flat band of background, not a scratch), a
# run at the region's edge (only one side to compare with), and columns saturated white or black in
# every channel (clipping: snow, a blown-out sky). The masking corruption's lines are one column
# wide, placed at random; at its 40 % density runs of 5 or more are ~1 % of them.
LINE_MAX_STD = 1.0
LINE_MIN_LENGTH = 16
LINE_MAX_RUN = 4
# Lines count as noise only when at least this share of the columns (rows) are lines.
LINE_MIN_SHARE = 0.05


def line_variance(region: np.ndarray, mask: np.ndarray | None = None) -> float:
    """v_l of :func:`noise_sigma`: the variance that lines of one colour add to ``region`` ((h, w, C)
    grey levels, 0..255), over the pixels where ``mask`` (h, w) bool is True (all when None).

    Per axis (columns, then rows): a line is a column whose values in the mask stay within
    LINE_MAX_STD of their mean (per channel) over at least LINE_MIN_LENGTH pixels; what it hides is
    estimated, row by row, by linear interpolation between the nearest columns on either side that
    are not lines (runs of over LINE_MAX_RUN columns, runs at the edge and saturated columns do not
    count). v_l = the sum of (x - estimate)^2 over the lines' pixels in the mask, divided by the
    number of values in the mask; 0.0 when under LINE_MIN_SHARE of the columns are lines."""
    x = np.asarray(region, dtype=np.float64)
    keep = np.ones(x.shape[:2], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    count = int(keep.sum()) * x.shape[2]
    if count == 0:
        return 0.0
    return float(sum(_line_energy(a, k) for a, k in ((x, keep), (x.transpose(1, 0, 2), keep.T))) / count)


def _short_inner_runs(flag: np.ndarray) -> np.ndarray:
    """flag (w,) bool with only its runs of at most LINE_MAX_RUN Trues that touch neither end kept."""
    out = np.zeros_like(flag)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flag.astype(np.int8), [0]])))
    for start, stop in zip(edges[0::2], edges[1::2]):
        if start > 0 and stop < flag.size and stop - start <= LINE_MAX_RUN:
            out[start:stop] = True
    return out


def _line_energy(x: np.ndarray, keep: np.ndarray) -> float:
    """The sum of squared jumps of the lines among the columns of x (h, w, C), in keep (h, w)."""
    n = keep.sum(axis=0)
    weights = keep[..., None].astype(np.float64)
    mean = (x * weights).sum(axis=0) / np.maximum(n, 1)[:, None]
    std = np.sqrt((((x - mean) ** 2) * weights).sum(axis=0) / np.maximum(n, 1)[:, None])
    saturated = np.all((mean <= 0.5) | (mean >= 254.5), axis=1)
    line = _short_inner_runs((n >= LINE_MIN_LENGTH) & (std.max(axis=1) <= LINE_MAX_STD) & ~saturated)
    if line.sum() < LINE_MIN_SHARE * x.shape[1]:
        return 0.0
    # every kept run is inner: the columns just left and right of each line are not lines
    cols, other = np.flatnonzero(line), np.flatnonzero(~line)
    right = np.searchsorted(other, cols)
    lo, hi = other[right - 1], other[right]
    w = ((cols - lo) / (hi - lo))[None, :, None]
    est = x[:, lo] * (1.0 - w) + x[:, hi] * w  # row by row, linear between the two neighbours
    return float((((x[:, cols] - est) ** 2) * keep[:, cols, None]).sum())


@functools.lru_cache(maxsize=64)  # one noise field per (region shape, factor), not per paste
def noise_share_of_fine_band(shape: tuple[int, int], factor: float, seed: int = 0) -> float:
    """beta: the share of unit white noise's variance that lies in D = x - L(x).

    Measured on a seeded noise field of the region's shape (so it includes the real filters'
    responses and the region's borders) rather than the ideal 1 - 1/factor^2.
    """
    if factor <= 1.0:
        return 0.0
    rng = np.random.default_rng(seed)
    n = rng.standard_normal((int(shape[0]), int(shape[1]), 1)).astype(np.float32)
    return float(np.var(n - lowpass(n, factor)))


def _local_energy(x: np.ndarray, radius: int) -> np.ndarray:
    """(h, w) float64: the channel-mean of x^2 averaged over a (2 radius + 1)^2 window."""
    from scipy.ndimage import uniform_filter

    energy = np.mean(np.asarray(x, dtype=np.float64) ** 2, axis=2)
    return uniform_filter(energy, 2 * radius + 1, mode="nearest")


def detail_gain(
    fine_input: np.ndarray, sigma: float, beta: float, factor: float, weight: float, margin: float = NOISE_MARGIN
) -> np.ndarray:
    """G: a local Wiener gain for the input's fine band, in [0, weight].

    Args:
        fine_input: (h, w, 3) D(P), the input's fine band.
        sigma: the input's noise std (grey levels), beta: :func:`noise_share_of_fine_band`.
        factor: photo px per frame px; the local window spans about two frame pixels (>= 5 px).
        weight: w in [0, 1], the user's fidelity weight.
        margin: m, the noise over-subtraction factor.
    Returns:
        (h, w, 1) float32.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"detail weight must be in [0, 1], got {weight}")
    local = _local_energy(fine_input, max(2, int(round(factor))))
    noise = margin * beta * sigma * sigma
    g = np.clip(1.0 - noise / np.maximum(local, 1e-12), 0.0, 1.0)
    return (weight * g).astype(np.float32)[..., None]


LOW_BANDS = ("off", "global", "local")
# chosen on the whole-photo benchmark (docs/faces.md): "local" gave clean faces back at 51 dB (50 with the fine-band gate, session 15) ("off":
# 29.4), mild blur and JPEG within 0.14 dB of the input ("off": 3.7-4.4 dB below), and improves the
# noise and mask rows
DEFAULT_LOW_BAND = "local"
LOW_MARGIN = 1.0
# below this share of the restoration's coarse change kept, the CLI's photo line and the app say
# that the gate refused most of it (a face back as it went in is then no failure)
LOW_KEPT = 0.5


def kept_percent(share: float) -> str:
    """``share`` (0..1) of the restoration's change as the CLI and the app print it, e.g. ``"49%"``:
    truncated, so a share under :data:`LOW_KEPT` never reads as 50%."""
    return f"{math.floor(round(100 * share, 6))}%"  # round first: int(100 * 0.29) is 28


def restoration_share(
    change: np.ndarray,
    sigma_low: float,
    mode: str,
    factor: float,
    mask: np.ndarray | None = None,
    margin: float = LOW_MARGIN,
) -> np.ndarray | float:
    """h: how much of the restoration's change to one band to keep, in [0, 1].

    The change d the prior made to a band (the coarse one, L(R) - L(P), or the fine one, D(R) -
    D(P)) has two sources: the input's own noise there (variance sigma_low^2, which the
    restoration should remove) and the
    prior's error (which it should not add: a weak or wrong prior changes a clean face too). The
    share of d's variance that the input's noise explains is the share of d worth keeping:

        h = clip(m * sigma_low^2 / var(d), 0, 1)

    ``global``: var(d) over the face mask, one h per face; ``local``: var(d) over a window of
    about two frame pixels, so a change the noise cannot explain (an erased pair of glasses, a
    new eye) is refused where it happens; ``off``: h = 1 (the restoration's coarse band as is).

    Args:
        change: (h, w, 3) d, grey levels. sigma_low: the input's noise std in that band.
        factor: photo px per frame px (the window's scale). mask: (h, w) for ``global``.
    Returns:
        a float (``off``, ``global``) or an (h, w, 1) float32 array (``local``).
    """
    if mode not in LOW_BANDS:
        raise ValueError(f"low band mode must be one of {LOW_BANDS}, got {mode!r}")
    if mode == "off":
        return 1.0
    noise = margin * sigma_low * sigma_low
    if mode == "global":
        energy = np.mean(np.asarray(change, dtype=np.float64) ** 2, axis=2)
        m = np.ones_like(energy) if mask is None else np.asarray(mask, dtype=np.float64)
        var = float((energy * m).sum() / max(m.sum(), 1e-12))
        return float(np.clip(noise / max(var, 1e-12), 0.0, 1.0))
    local = _local_energy(change, max(2, int(round(2 * max(factor, 1.0)))))
    return np.clip(noise / np.maximum(local, 1e-12), 0.0, 1.0).astype(np.float32)[..., None]


def keep_input(
    restored: np.ndarray,
    photo: np.ndarray,
    factor: float,
    weight: float = DEFAULT_FIDELITY,
    mask: np.ndarray | None = None,
    colour: bool = DEFAULT_MATCH_COLOUR,
    low_band: str = DEFAULT_LOW_BAND,
    low_margin: float = LOW_MARGIN,
    stats: dict | None = None,
    noise_floor: float = NOISE_FLOOR,
) -> np.ndarray:
    """F = L(P) + H (L(R') - L(P)) + D(R') + G (D(P) - D(R')): what the pasted face keeps of the input.

    R' = R colour-matched to P (when ``colour``). Coarse band: the restoration's change is kept
    in the share H = 1 - w (1 - h) (:func:`restoration_share`); fine band: the input's detail where it
    is signal, gain G = w (1 - min(1 - g, h_f)) (:func:`detail_gain`'s g; h_f: the share of the
    fine-band change that the input's fine-band noise explains, :func:`restoration_share` with the
    same mode and margin max(low_margin, NOISE_MARGIN); with ``low_band='off'`` h_f = 1 and G = w g). With w = 0 this is R' itself; with w = 1 and a
    clean input it is (close to) P itself: a good photo does not come back worse.

    Args:
        restored: (h, w, 3) float, R: the restored face warped to photo space (0..255).
        photo: (h, w, 3) uint8 or float, P: the input over the same pixels.
        factor: photo px per frame px (1 / :func:`odedit.align.scale_of` of the photo -> frame
            matrix); at or below 1 the whole region is the coarse band.
        weight: w in [0, 1] (0 = the restoration as upsampled).
        mask: (h, w) the face mask: where the noise level and colour are measured.
        colour: match R's mean colour to P's first (:func:`match_colour`).
        low_band, low_margin: see :func:`restoration_share`.
        stats: when given, ``stats['restoration_kept']`` is set to H's mean over the mask (the
            share of the restoration's coarse change the face kept, in [0, 1]).
        noise_floor: the input's noise level is :func:`noise_sigma` less this floor
            (:func:`above_floor`; 0 = the raw estimate).
    Returns:
        (h, w, 3) float32, not clipped.
    """
    r = np.asarray(restored, dtype=np.float32)
    p = np.asarray(photo, dtype=np.float32)
    if r.shape != p.shape:
        raise ValueError(f"restored {r.shape} and photo {p.shape} regions differ")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fidelity must be in [0, 1], got {weight}")
    if colour and mask is not None:
        r = match_colour(r, p, mask)
    if weight == 0.0:
        if stats is not None:
            stats["restoration_kept"] = 1.0
        return r.copy()
    low_p, low_r = lowpass(p, factor), lowpass(r, factor)
    sigma = above_floor(noise_sigma(p, mask), noise_floor)
    beta = noise_share_of_fine_band(tuple(int(v) for v in p.shape[:2]), float(max(factor, 1.0)))
    h = restoration_share(low_r - low_p, sigma * np.sqrt(1.0 - beta), low_band, factor, mask, low_margin)
    share = 1.0 - weight * (1.0 - h)
    if stats is not None:
        stats["restoration_kept"] = _masked_mean(share, mask)
    out = low_p + share * (low_r - low_p)
    if factor > 1.0:
        fine_p, fine_r = p - low_p, r - low_r
        # The restoration's fine band replaces the input's where the latter is noise (1 - g), and
        # only as far as the input's fine-band noise (variance beta sigma^2) explains the change,
        # as in the coarse band: a blurred input's fine band is weak but not noise. The margin is g's
        # (a local fine-band variance is itself noisy): with low_margin's 1 a noisy face kept some of
        # its noise, and a masked one its flat blocks (whole-photo benchmark, session 16: mask 5 SSIM
        # 0.386 -> 0.315 at 384 px with 1, unchanged with 1.5; clean 50.1 / 47.9 dB, blur 1 -0.10 / -0.15).
        g = detail_gain(fine_p, sigma, beta, factor, 1.0)
        h_fine = restoration_share(fine_r - fine_p, sigma * np.sqrt(beta), low_band, factor, mask,
                                   max(low_margin, NOISE_MARGIN))
        gain = weight * (1.0 - np.minimum(1.0 - g, h_fine))
        out = out + fine_r + gain * (fine_p - fine_r)
    return out.astype(np.float32)


def _masked_mean(share: np.ndarray | float, mask: np.ndarray | None) -> float:
    """The mean of a scalar or (h, w, 1) share over ``mask`` (all pixels when None)."""
    a = np.asarray(share, dtype=np.float64)
    if a.ndim == 0:
        return float(a)
    a = a[..., 0]
    m = np.ones_like(a) if mask is None else np.asarray(mask, dtype=np.float64)
    if m.sum() <= 1e-9:  # no face pixel here: nothing was refused
        return 1.0
    return float((a * m).sum() / m.sum())


def match_colour(restored: np.ndarray, photo: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift each channel of ``restored`` so its mask-weighted mean equals ``photo``'s.

    Args:
        restored, photo: (h, w, 3) float (0..255), the same pixels.
        mask: (h, w) weights in [0, 1]; an all-zero mask returns ``restored`` unchanged.
    Returns:
        (h, w, 3) float32, not clipped.
    """
    r = np.asarray(restored, dtype=np.float32)
    p = np.asarray(photo, dtype=np.float32)
    m = np.asarray(mask, dtype=np.float64)[..., None]
    total = float(m.sum())
    if total <= 0:
        return r.copy()
    shift = ((p - r) * m).sum(axis=(0, 1)) / total
    return r + shift.astype(np.float32)
