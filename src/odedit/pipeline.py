"""One pipeline from photos to restored photos, for ``odedit restore`` and the web app.

    (name, photo) --plan--> crops: one per detected face, or the fitted crop of an aligned input
                  --batch--> crops of several photos, ``batch_size`` at a time
                  --restore--> the restorer, one seeded generator per crop; diverged crops marked
                  --finish--> upsample and paste back, once all of a photo's crops are back
                  --> (item, result, info)

:class:`Pipeline` holds what the path needs (the restorer, the detector, face mesh and
upsampler, made on first use, and :class:`PipelineOptions`) and reports its stages to a
:class:`Progress`. Its callers keep only their own input and output: the CLI reads files and
writes PNGs and ``restore.json`` (:mod:`odedit.manifest`), the app takes an upload.

Seeds: face *i* of the photo called NAME gets :func:`odedit.rng.face_seed` (base seed, NAME,
*i*), so a result depends neither on the batch nor on the other photos. The steps on one
photo are in :mod:`odedit.faces` (:func:`~odedit.faces.plan_photo`,
:func:`~odedit.faces.finish_photo`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from odedit.detect import too_small_for_detection
from odedit.faces import FACE_MODES, PASTE_MASKS, PhotoJob, finish_photo, plan_photo, uses_detection
from odedit.fidelity import DEFAULT_FIDELITY, DEFAULT_LOW_BAND, DEFAULT_MATCH_COLOUR, LOW_BANDS
from odedit.imageio import uint8_to_unit, unit_to_uint8
from odedit.rng import face_seed, generators_for

DIVERGED = "diverged"  # info["status"] of a photo whose restoration diverged (result None)


@dataclass(frozen=True)
class PipelineOptions:
    """How photos go through a :class:`Pipeline`; the ``odedit restore`` flags of the same names.

    Attributes:
        seed: the base seed of :func:`odedit.rng.face_seed`.
        batch_size: crops per restorer call, across photos; None: each photo's crops in one
            call of their own.
        faces: ``auto`` (detect faces; a model-sized input is an aligned crop) | ``aligned``.
        max_faces: faces restored per photo, best first (None: all); the others are counted.
        min_face_score: the threshold of the pipeline's own detector.
        fit, keep_size: how an aligned crop is made square, and whether it goes back to its size.
        paste_mask: ``face`` | ``frame`` (:data:`odedit.faces.PASTE_MASKS`).
        upsampler: the pipeline's own upsampler (:func:`odedit.upsample.make_upsampler`).
        fidelity, match_colour, low_band: paste-time options (:func:`odedit.faces.paste_faces`).
    """

    seed: int = 0
    batch_size: Optional[int] = 8
    faces: str = "auto"
    max_faces: Optional[int] = 10
    min_face_score: float = 0.5
    fit: str = "stretch"
    keep_size: bool = False
    paste_mask: str = "face"
    upsampler: str = "lanczos"
    fidelity: float = DEFAULT_FIDELITY
    match_colour: bool = DEFAULT_MATCH_COLOUR
    low_band: str = DEFAULT_LOW_BAND

    def __post_init__(self):
        if self.low_band not in LOW_BANDS:
            raise ValueError(f"low band mode must be one of {LOW_BANDS}, got {self.low_band!r}")
        if self.faces not in FACE_MODES:
            raise ValueError(f"faces mode must be one of {FACE_MODES}, got {self.faces!r}")
        if self.paste_mask not in PASTE_MASKS:
            raise ValueError(f"paste mask must be one of {PASTE_MASKS}, got {self.paste_mask!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")

    def settings(self) -> dict:
        """What ``restore.json`` records of these options (batch size aside: it changes nothing)."""
        return {
            "base_seed": self.seed,
            "fit": self.fit,
            "keep_size": self.keep_size,
            "faces": self.faces,
            "max_faces": self.max_faces,
            "min_face_score": self.min_face_score,
            "upsampler": self.upsampler,
            "paste_mask": self.paste_mask,
            "fidelity": self.fidelity,
            "match_colour": self.match_colour,
            "low_band": self.low_band,
        }


@dataclass(frozen=True)
class Stage:
    """What the pipeline does now: ``detect`` (faces of ``photo``), ``restore`` (a batch of
    ``total`` crops, possibly of several photos) or ``paste`` (face ``done + 1`` of ``total``
    of ``photo``). ``str()`` gives the console's wording."""

    name: str
    photo: Optional[str] = None
    done: int = 0
    total: int = 0

    def __str__(self) -> str:
        if self.name == "detect":
            return f"{self.photo}: detecting faces"
        if self.name == "restore":
            return f"restoring {self.total} face(s)"
        return f"{self.photo}: pasting face {self.done + 1}/{self.total}"


class Progress:
    """What a :class:`Pipeline` reports while it works. Every hook does nothing here: override
    the ones to show. Any object with these three hooks will do (the CLI's and the app's do not
    subclass it, so that importing them imports no torch)."""

    def stage(self, stage: Stage) -> None:
        """A stage starts (on a very large photo each one takes seconds)."""

    @contextlib.contextmanager
    def restoring(self, crops: int, calls: int) -> Iterator[Optional[Callable[[int], None]]]:
        """Around one restorer call on ``crops`` crops of ``calls`` model calls each (left on
        errors too). Yields the restorer's callback, ``callback(k)`` after each model call, or None."""
        yield None

    def batch_done(self) -> None:
        """The photos a batch completed have all been handed out: a moment to save records."""


@dataclass
class _Photo:
    """One input on its way: the caller's item, its crops and their restorations."""

    item: Any
    name: str
    job: PhotoJob
    results: list
    diverged: bool = False  # a crop's restoration diverged: the photo has no result


class Pipeline:
    """Photos in, restored photos out (module docstring). Use as a context manager, or call
    :meth:`close`, to free the detector and face mesh it made.

    Args:
        restorer: an :class:`odedit.restorers.Restorer`; its config picks the method.
        options: :class:`PipelineOptions` (default: all defaults).
        detector, mesh, upsampler: each the caller's instance, or a callable that makes one
            (called on first use), or None: the pipeline makes its own on first use (a
            :class:`odedit.detect.FaceDetector` with ``options.min_face_score``; a
            :class:`odedit.facemask.FaceMesh`, or keypoint ellipses where mediapipe has none;
            ``make_upsampler(options.upsampler)``). ``mesh=False``: keypoint ellipses. What
            the pipeline made (itself or by a callable) :meth:`close` closes.
        progress: a :class:`Progress`.
        device: where the crops' generators live (default: the restorer's model's device).
    """

    _METHODS = {"detector": "detect", "mesh": "ovals", "upsampler": "upsample"}

    def __init__(self, restorer, options: Optional[PipelineOptions] = None, *, detector=None, mesh=None,
                 upsampler=None, progress: Optional[Progress] = None, device=None):
        self.restorer = restorer
        self.options = options or PipelineOptions()
        self.size = int(restorer.model.sample_size)
        self.progress = progress or Progress()
        self.device = device if device is not None else getattr(restorer.model, "device", "cpu")
        self._given = {"detector": detector, "mesh": mesh, "upsampler": upsampler}
        self._tools: dict = {}
        self._own: set = set()

    # ---- the tools, made on first use --------------------------------------------------------

    def detector(self):
        """The face detector (made on first use; DetectorUnavailable without mediapipe)."""
        from odedit.detect import FaceDetector

        return self._tool("detector", lambda: FaceDetector(min_score=self.options.min_face_score))

    def mesh(self):
        """The face mesh for the faces' outlines, or False (keypoint ellipses) where it cannot load."""
        from odedit.facemask import mesh_or_none

        return self._tool("mesh", lambda: mesh_or_none() or False)

    def upsampler(self):
        """The upsampler of the paste-back (UpsamplerError when it cannot load)."""
        from odedit.upsample import make_upsampler

        return self._tool("upsampler", lambda: make_upsampler(self.options.upsampler, device=str(self.device)))

    def _tool(self, name: str, make: Callable):
        if name not in self._tools:
            given = self._given[name]
            if given is False or hasattr(given, self._METHODS[name]):  # the caller's
                self._tools[name] = given
            else:
                self._tools[name] = (make if given is None else given)()
                self._own.add(name)
        return self._tools[name]

    def close(self) -> None:
        """Close the detector and face mesh the pipeline made (not the caller's instances)."""
        for name in ("detector", "mesh"):
            tool = self._tools.get(name)
            if name in self._own and tool:
                tool.close()
                del self._tools[name]

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- photos through ----------------------------------------------------------------------

    def run(self, items: Iterable) -> Iterator[tuple[Any, Optional[np.ndarray], dict]]:
        """Restore ``items``, each a ``(name, photo, ...)`` tuple: NAME (the file name, for the
        seeds), an (H, W, 3) uint8 photo, anything else the caller's. Items are taken one at a
        time, as crops are needed; their crops are restored ``batch_size`` at a time across
        photos.

        Yields ``(item, result, info)`` as each photo completes (in input order within a
        batch): the item itself; the output image (the whole photo with its faces pasted back
        or unchanged when it has none, or the aligned crop's output), or None when a restoration
        diverged; and ``info``: :func:`odedit.faces.finish_photo`'s info, plus ``seed`` (the
        photo's), ``input_size`` ([W, H]) and, when faces were pasted, ``upsampler`` (its name).
        A diverged photo's info has ``status`` :data:`DIVERGED`, its mode, seed and size.
        """
        opts = self.options
        if (opts.faces == "auto" or opts.keep_size) and opts.upsampler != "lanczos":
            self.upsampler()  # a model that cannot load fails now, not after the first restoration
        pending: list[tuple[_Photo, int]] = []  # (photo, index of its crop)
        for item in items:
            photo = self._plan(item)
            if not photo.job.crops:  # a photo without a detected face
                yield self._finish(photo)
                continue
            for k in range(len(photo.job.crops)):
                pending.append((photo, k))
                if len(pending) == opts.batch_size:
                    yield from self._flush(pending)
            if opts.batch_size is None:
                yield from self._flush(pending)
        yield from self._flush(pending)

    def restore_photo(self, name: str, photo: np.ndarray) -> tuple[Optional[np.ndarray], dict]:
        """One photo through the pipeline: ``(result, info)`` as :meth:`run` yields them."""
        ((_, result, info),) = self.run([(name, photo)])
        return result, info

    def _plan(self, item) -> _Photo:
        """Detect and align the item's faces (or fit its aligned crop), each with its seed."""
        name, image = item[0], item[1]
        opts = self.options
        searched = uses_detection(opts.faces, image.shape, self.size) and not too_small_for_detection(image.shape)
        if searched:
            self.progress.stage(Stage("detect", name))
        job = plan_photo(
            image, self.size, lambda i: face_seed(opts.seed, name, i), faces_mode=opts.faces,
            detector=self.detector() if searched else None, max_faces=opts.max_faces, fit=opts.fit,
            paste_mask=opts.paste_mask, mesh=self.mesh if searched and opts.paste_mask == "face" else False,
        )
        return _Photo(item, name, job, [None] * len(job.crops))

    def _flush(self, pending: list) -> Iterator[tuple]:
        """Restore the pending crops; yield the photos they completed; empty ``pending``."""
        if not pending:
            return
        for photo in self._restore(pending):
            yield self._finish(photo)
        self.progress.batch_done()

    def _restore(self, pending: list) -> list[_Photo]:
        """One restorer call on the pending crops; the photos whose last crop was among them."""
        crops = np.stack([photo.job.crops[k] for photo, k in pending])
        gens = generators_for([photo.job.seeds[k] for photo, k in pending], self.device)
        self.progress.stage(Stage("restore", total=len(pending)))
        with self.progress.restoring(len(pending), self.restorer.config.nfe) as callback:
            out, diverged = self.restorer.restore_with_status(uint8_to_unit(crops), generator=gens, callback=callback)
        # One host sync per batch, after sampling: a diverged restoration (NaN/inf or far out of
        # range, e.g. a huge step size) fails its photo, never becomes a result.
        completed = []
        for (photo, k), result, bad in zip(pending, unit_to_uint8(out), diverged.tolist()):
            photo.results[k] = result
            photo.diverged = photo.diverged or bool(bad)
            if k == len(photo.job.crops) - 1:
                completed.append(photo)
        pending.clear()
        return completed

    def _finish(self, photo: _Photo) -> tuple[Any, Optional[np.ndarray], dict]:
        """Paste the restored faces back (or finish the aligned crop): (item, result, info)."""
        job, opts = photo.job, self.options
        info = {
            "seed": job.seeds[0] if job.seeds else face_seed(opts.seed, photo.name, 0),
            "input_size": [int(job.photo.shape[1]), int(job.photo.shape[0])],
        }
        if photo.diverged:
            return photo.item, None, {**info, "mode": job.mode, "status": DIVERGED}

        def pasting(i: int, n: int) -> None:
            self.progress.stage(Stage("paste", photo.name, i, n))

        result, done = finish_photo(job, photo.results, self.upsampler, keep_size=opts.keep_size, fit=opts.fit,
                                    progress=pasting, fidelity=opts.fidelity, match_colour=opts.match_colour,
                                    low_band=opts.low_band)
        info.update(done)
        if (done["mode"] == "faces" and done["faces"]) or done.get("upsample_factor", 1) > 1:
            info["upsampler"] = getattr(self.upsampler(), "name", opts.upsampler)
        return photo.item, result, info
