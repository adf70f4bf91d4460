"""The web demo: ``odedit app``, a Gradio page over the same pipeline as ``odedit restore``.

Gradio is an optional extra (``pip install 'odedit[app]'``), imported lazily. One model is
loaded per process and restorations run one at a time (a queue with concurrency 1), so two
browser tabs cannot run a small machine out of memory.

The page's results are reproducible with the CLI: the per-image seed is derived from the
base seed and the uploaded file's name exactly as ``odedit restore`` does, and the page shows
the equivalent ``odedit corrupt`` / ``odedit restore`` commands.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import tempfile
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np

MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000
INSTALL_HINT = "pip install 'odedit[app]'"
SAMPLES_DIR = "samples"


class AppUnavailable(RuntimeError):
    """Gradio is not installed."""


def sample_faces() -> dict[str, Path]:
    """The bundled sample faces: name -> file (CelebA-HQ portraits, 192 px)."""
    folder = resources.files("odedit").joinpath("assets", SAMPLES_DIR)
    return {p.name: Path(str(p)) for p in sorted(folder.iterdir(), key=lambda p: p.name) if p.name.endswith(".jpg")}


@dataclass(frozen=True)
class Request:
    """What the page asks for; validated here, mapped onto the restorer configs."""

    method: str = "odedit"  # odedit | sdedit
    preset: str = "fast"  # odedit.restorers.DEFAULT_PRESET (checked in the tests)
    langevin_steps: int = 0  # per level; 0 = the preset's
    step_size: Optional[float] = None
    strength: float = 0.5
    seed: int = 0
    faces: str = "auto"
    degrade: bool = False
    corruption: str = "gaussian_noise"
    severity: int = 3

    def config(self):
        from odedit.restorers import ODEditConfig, SDEditConfig

        options = {  # each method's settings on the page (None = the preset's or the default)
            ODEditConfig: dict(preset=self.preset, langevin_steps=self.langevin_steps or None, step_size=self.step_size),
            SDEditConfig: dict(strength=float(self.strength)),
        }
        config_type = self._config_type()
        return config_type.from_options(**options[config_type])

    def _config_type(self) -> type:
        from odedit.restorers import METHODS

        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}")
        return METHODS[self.method]

    def commands(self, name: str, model: Optional[str]) -> list[str]:
        """The CLI commands that reproduce this request on a file called ``name``."""
        model_flag = ["--model", model] if model else []
        src = name
        cmds = []
        if self.degrade:
            cmds.append(shlex.join(["odedit", "corrupt", name, "-o", "degraded", "--corruption", self.corruption,
                                    "--severity", str(self.severity), "--seed", str(self.seed)]))
            src = f"degraded/{Path(name).stem}.png"
        from odedit.restorers import ODEditConfig, SDEditConfig

        odedit_flags = ["--preset", self.preset]
        if self.langevin_steps:
            odedit_flags += ["--langevin-steps", str(self.langevin_steps)]
        if self.step_size is not None:
            odedit_flags += ["--step-size", repr(self.step_size)]
        method_flags = {ODEditConfig: odedit_flags, SDEditConfig: ["--strength", repr(float(self.strength))]}
        flags = ["--method", self.method, "--seed", str(self.seed), "--faces", self.faces,
                 *method_flags[self._config_type()]]
        cmds.append(shlex.join(["odedit", "restore", src, "-o", "restored", *model_flag, *flags]))
        return cmds


class Engine:
    """Holds the loaded model, detector and upsampler; restores one photo per call."""

    def __init__(self, model: Optional[str] = None, device: str = "cpu", dtype: str = "auto"):
        import torch

        from odedit.devices import resolve_device, resolve_dtype_for
        from odedit.models import load_model

        self.model_source = model
        self.device = resolve_device(device)
        self.dtype = resolve_dtype_for(dtype, self.device) if isinstance(dtype, str) else dtype
        self.model = load_model(model, device=self.device, dtype=self.dtype)
        self.size = int(self.model.sample_size)
        self._detector = None
        self._lock = threading.Lock()  # one restoration at a time, whatever the web server does
        self._torch = torch

    def detector(self):
        from odedit.detect import FaceDetector

        if self._detector is None:
            self._detector = FaceDetector()
        return self._detector

    def run(self, image: np.ndarray, name: str, req: Request, progress=None) -> tuple[np.ndarray, np.ndarray, dict]:
        """(input shown as 'before', result, info). ``progress(done, total)`` per model call."""
        from odedit.corruptions import corrupt
        from odedit.faces import uses_detection
        from odedit.pipeline import Pipeline, PipelineOptions
        from odedit.restorers import Restorer
        from odedit.rng import corrupt_seed

        config = req.config()
        before = image
        stem_png = f"{Path(name).stem}.png"
        if req.degrade:
            rng = np.random.default_rng(corrupt_seed(req.seed, stem_png))
            before = corrupt(image, req.corruption, int(req.severity), rng)
        restore_name = stem_png if req.degrade else Path(name).name  # the file `odedit restore` would see
        restorer = Restorer(self.model, config)  # the config's type picks the algorithm
        detecting = uses_detection(req.faces, before.shape, self.size)
        # the CLI's seed rule (odedit.rng.face_seed) and defaults, so its commands reproduce this;
        # all of the photo's faces in one batch
        options = PipelineOptions(seed=req.seed, batch_size=None, faces=req.faces)
        with self._lock, Pipeline(restorer, options, detector=self.detector() if detecting else None,
                                  progress=_PageProgress(progress), device=self.device) as pipeline:
            result, info = pipeline.restore_photo(restore_name, before)
        if result is None:
            raise ValueError("the restoration diverged (non-finite or far out-of-range values); lower the step size")
        info = {
            **info,
            "method": req.method,
            "config": config.to_dict(),
            "model": self.model_source or "embedded default prior",
            "base_seed": req.seed,
            "file_name": restore_name,
            "degraded": {"corruption": req.corruption, "severity": req.severity} if req.degrade else None,
            "model_calls_per_face": config.nfe,
            "commands": req.commands(Path(name).name, self.model_source),
        }
        return before, result, info


class _PageProgress:
    """The pipeline's progress for the page: ``progress(done, total)`` after each model call of
    a batch (:class:`odedit.pipeline.Progress`)."""

    def __init__(self, progress=None):
        self.progress = progress

    def stage(self, stage) -> None:
        pass

    @contextlib.contextmanager
    def restoring(self, crops: int, calls: int):
        done = [0]

        def tick(n: int = 1) -> None:
            done[0] += n
            if self.progress is not None:
                self.progress(done[0], calls)

        yield tick

    def batch_done(self) -> None:
        pass


def check_upload(path: str) -> tuple[np.ndarray, str]:
    """Load an uploaded file for the page: (uint8 image, original name), or ValueError with the
    message the page shows."""
    from odedit.imageio import ImageError, load_image_uint8

    p = Path(path)
    size = p.stat().st_size
    if size == 0:
        raise ValueError(f"{p.name}: the file is empty")
    if size > MAX_UPLOAD_BYTES:
        raise ValueError(f"{p.name}: {size / 2**20:.0f} MB is larger than the {MAX_UPLOAD_BYTES // 2**20} MB upload limit")
    try:
        image = load_image_uint8(p)  # refuses decompression bombs before decoding
    except ImageError as err:
        raise ValueError(str(err).replace(str(p), p.name)) from None
    h, w = image.shape[:2]
    if h * w > MAX_UPLOAD_PIXELS:
        raise ValueError(
            f"{p.name}: {w}x{h} is larger than the app's {MAX_UPLOAD_PIXELS / 1e6:.0f}-megapixel limit; "
            "use the command line for huge photos"
        )
    return image, p.name


def save_result(image: np.ndarray, name: str) -> str:
    """Write the result as a PNG into a fresh temp folder; returns its path (for download)."""
    from odedit.imageio import save_png_atomic

    folder = tempfile.mkdtemp(prefix="odedit-app-")
    path = os.path.join(folder, f"{Path(name).stem}_restored.png")
    save_png_atomic(path, image)
    return path


def result_note(name: str, result: np.ndarray, info: dict) -> str:
    """The status line the page shows after a run (Markdown); it says when the coarse-band gate
    kept the photo's own pixels for most of a face (:data:`odedit.fidelity.LOW_KEPT`)."""
    from odedit.fidelity import LOW_KEPT, kept_percent

    if info["status"] != "restored":
        return "No face was found: the photo is shown unchanged (try *aligned* for a face crop)."
    note = f"Restored {name}: {result.shape[1]}x{result.shape[0]} px, {info['model_calls_per_face']} model calls per face."
    kept = [f.get("restoration_kept", 1.0) for f in info.get("faces") or []]
    if info.get("mode") == "aligned":  # the whole crop is the face
        kept = [info.get("restoration_kept", 1.0)]
    if kept and min(kept) < LOW_KEPT:
        note += (f" A face kept only {kept_percent(min(kept))} of the model's change: the rest was not explained by the"
                 " photo's noise, so the photo's own pixels stayed (`odedit restore --low-band off` keeps it all).")
    return note


def build_app(engine: Engine):
    """The Gradio Blocks page over ``engine``."""
    try:
        import gradio as gr
    except ImportError as err:
        raise AppUnavailable(f"the web app needs gradio ({err}); install it with: {INSTALL_HINT}") from None
    from odedit.corruption_names import CORRUPTIONS
    from odedit.detect import detector_available
    from odedit.restorers import DEFAULT_PRESET, PRESETS

    samples = sample_faces()
    has_detector = detector_available()

    def restore(upload, sample, degrade, corruption, severity, method, preset, langevin, strength, seed, faces,
                progress=gr.Progress()):
        try:
            if upload:
                image, name = check_upload(upload)
            elif sample and sample in samples:
                image, name = check_upload(str(samples[sample]))
            else:
                raise ValueError("upload an image or pick a sample face first")
            if faces == "auto" and not has_detector:
                raise ValueError("whole-photo mode needs the face detector: pip install 'odedit[faces]'")
            req = Request(
                method=method.lower(), preset=preset, langevin_steps=int(langevin or 0), strength=float(strength),
                seed=int(seed or 0), faces=faces, degrade=bool(degrade), corruption=corruption, severity=int(severity),
            )
            before, result, info = engine.run(
                image, name, req, progress=lambda d, t: progress(d / max(t, 1), desc=f"model call {d}/{t}")
            )
        except ValueError as err:
            return f"**Error:** {err}", None, None, "", ""
        path = save_result(result, name)
        note = result_note(name, result, info)
        return note, (before, result), path, "\n".join(info["commands"]), json.dumps(info, indent=2)

    with gr.Blocks(title="odedit: face restoration") as demo:
        gr.Markdown(
            "# odedit\nBlind face restoration with a diffusion prior (ODEdit: probability-flow inversion + "
            "Langevin refinement; SDEdit baseline). Upload a face crop or a whole photo."
        )
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image (PNG, JPEG, ...)", file_count="single", type="filepath", elem_id="upload")
                sample = gr.Dropdown(["", *samples], value="", label="...or a bundled sample face", elem_id="sample")
                with gr.Accordion("Degrade first (try the method on a clean face)", open=False):
                    degrade = gr.Checkbox(label="degrade the input first", value=False, elem_id="degrade")
                    corruption = gr.Dropdown(list(CORRUPTIONS), value="gaussian_noise", label="corruption")
                    severity = gr.Slider(1, 5, value=3, step=1, label="severity")
                method = gr.Radio(["ODEdit", "SDEdit"], value="ODEdit", label="method")
                preset = gr.Radio(list(PRESETS), value=DEFAULT_PRESET,
                                  label="ODEdit preset (light/medium/heavy: 100/200/300 Langevin updates: more remove more noise and masks and smooth more; fast, the default: 80 model calls)")
                langevin = gr.Number(value=0, precision=0, minimum=0, maximum=1000, label="Langevin updates per level (0 = preset)")
                strength = gr.Slider(0.05, 1.0, value=0.5, step=0.05, label="SDEdit strength")
                seed = gr.Number(value=0, precision=0, minimum=0, label="seed")
                faces = gr.Radio(["auto", "aligned"], value="auto" if has_detector else "aligned",
                                 label="faces: auto = detect faces in a whole photo; aligned = the input is a face crop")
                button = gr.Button("Restore", variant="primary", elem_id="restore")
            with gr.Column():
                status = gr.Markdown("", elem_id="status")
                slider = gr.ImageSlider(label="before / after", type="numpy", elem_id="result")
                download = gr.File(label="download the result", elem_id="download")
                commands = gr.Textbox(label="the same with the command line", lines=2, interactive=False,
                                      elem_id="commands")
                with gr.Accordion("settings, seeds and detected faces (JSON)", open=False):
                    settings = gr.Code(label="settings", language="json", elem_id="settings")
        button.click(
            restore,
            inputs=[upload, sample, degrade, corruption, severity, method, preset, langevin, strength, seed, faces],
            outputs=[status, slider, download, commands, settings],
            concurrency_limit=1,
        )
    demo.queue(max_size=16, default_concurrency_limit=1)
    return demo
