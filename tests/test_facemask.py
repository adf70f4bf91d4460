"""The face-only paste-back mask (odedit.facemask): only the face goes back into the photo;
hair, background and clothes, also inside the face's aligned frame, keep their pixels exactly."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from odedit import align, facemask
from odedit.detect import Detection, detector_available, quiet_native_stderr
from odedit.faces import cut_faces, finish_photo, paste_faces, paste_mask, plan_photo

DATA = Path(__file__).parent / "data"
FACE = DATA / "face_00234.jpg"  # 256 px, cut from a CelebA-HQ sample (see tests/data/README.md)
SIZE = 64  # the model frame of the embedded prior
needs_detector = pytest.mark.skipif(not detector_available(), reason="needs the faces extra (mediapipe 0.10.14)")


def stripes(h: int, w: int) -> np.ndarray:
    """A background no face has: saturated green/magenta diagonal stripes, 8 px wide."""
    ys, xs = np.mgrid[0:h, 0:w]
    on = ((xs + ys) // 8) % 2 == 0
    out = np.empty((h, w, 3), np.uint8)
    out[on] = (30, 200, 60)
    out[~on] = (210, 40, 190)
    return out


def small_face_photo() -> np.ndarray:
    """The bundled face at 200 px in a 600 x 560 striped photo: the face covers < 1/4 of it."""
    photo = stripes(560, 600)
    photo[180:380, 220:420] = np.asarray(Image.open(FACE).convert("RGB").resize((200, 200), Image.LANCZOS))
    return photo


def portrait_photo() -> np.ndarray:
    """The bundled face upscaled to 600 px in a 640 px striped frame: a close-up portrait."""
    photo = stripes(640, 640)
    photo[20:620, 20:620] = np.asarray(Image.open(FACE).convert("RGB").resize((600, 600), Image.BICUBIC))
    return photo


def negative(crops: np.ndarray) -> np.ndarray:
    """A 'restoration' that changes every pixel a lot."""
    return 255 - np.asarray(crops, dtype=np.uint8)


def restore_whole(photo: np.ndarray, paste: str = "face", mesh=None):
    from odedit.detect import FaceDetector

    with FaceDetector() as det:
        job = plan_photo(photo, SIZE, lambda i: i, detector=det, paste_mask=paste, mesh=mesh)
    assert len(job.faces) == 1
    # the coarse-band gate off: these tests are about where the paste lands, and the gate
    # (rightly) refuses most of a change this clean photo's noise cannot explain
    result, info = finish_photo(job, [negative(c) for c in job.crops], low_band="off")
    return job.faces[0], result, info


def frame_pixels_outside_outline(face, photo_shape, margin: float):
    """Photo pixels inside the face's frame (>= 2 frame px from its border) but more than
    ``margin`` frame px outside the face's outline; and those well inside the outline."""
    h, w = photo_shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    q = align.apply(face.matrix, np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1))  # frame coords
    in_frame = ((q >= 2) & (q <= SIZE - 2)).all(1)
    d = facemask.polygon_signed_distance(face.outline, q)
    size = np.sqrt(facemask.polygon_area(face.outline))
    outside = in_frame & (d < -margin)
    inside = d > facemask.FEATHER * size + 1.0
    return outside.reshape(h, w), inside.reshape(h, w)


def support_margin(face) -> float:
    """How far (frame px) outside the outline the pasted mask can reach: the dilation plus
    the bilinear warp's reach of two mask pixels (the upsampled frame has >= SIZE px)."""
    return facemask.DILATE * np.sqrt(facemask.polygon_area(face.outline)) + 2.0


# ---- (a) pixels outside the face keep the input's values ----------------------------------------


@needs_detector
@pytest.mark.parametrize("make", [small_face_photo, portrait_photo], ids=["small-face", "portrait"])
def test_only_the_face_changes(make):
    photo = make()
    face, out, info = restore_whole(photo)
    assert face.outline_source == "face_mesh"
    (entry,) = info["faces"]
    assert entry["paste_mask"] == "face" and entry["mask_source"] == "face_mesh"
    assert 0.1 < entry["mask_area_fraction"] < 0.3  # the oval, not the frame (~0.7)
    changed = (out != photo).any(2)
    outside, inside = frame_pixels_outside_outline(face, photo.shape, support_margin(face))
    # background and hair inside the aligned frame but outside the face: what the frame mask changed
    assert outside.sum() > 0.1 * photo.shape[0] * photo.shape[1] / (4 if make is small_face_photo else 1)
    assert not changed[outside].any()
    assert changed[inside].mean() > 0.99  # the face itself was pasted
    # everything that changed lies on the face: within its box grown by 40 %
    x0, y0, x1, y1 = face.detection.box
    gx, gy = 0.4 * (x1 - x0), 0.4 * (y1 - y0)
    ys, xs = np.nonzero(changed)
    assert xs.min() >= x0 - gx and xs.max() <= x1 + gx and ys.min() >= y0 - gy and ys.max() <= y1 + gy
    for corner in (np.s_[:96, :96], np.s_[:96, -96:], np.s_[-96:, :96], np.s_[-96:, -96:]):
        assert np.array_equal(out[corner], photo[corner])


@needs_detector
def test_the_frame_mask_changes_the_background_the_face_mask_keeps():
    """The same check on the old full-frame mask fails: it is what the face mask fixes."""
    photo = small_face_photo()
    face, out, info = restore_whole(photo, paste="frame")
    assert info["faces"][0]["paste_mask"] == "frame" and "mask_source" not in info["faces"][0]
    assert face.outline is None  # no outline is computed for the frame mask
    (with_outline,) = cut_faces(photo, [face.detection], SIZE, mesh=facemask.mesh_or_none())
    outside, _ = frame_pixels_outside_outline(with_outline, photo.shape, support_margin(with_outline))
    assert (out != photo).any(2)[outside].mean() > 0.5


@needs_detector
def test_pasted_pixels_follow_the_mask_exactly():
    """Where the warped mask is 0 the photo is bit-identical; where it is ~1 the face is pasted."""
    photo = small_face_photo()
    face, out, _ = restore_whole(photo)
    mask, _ = paste_mask(face, SIZE)
    h, w = photo.shape[:2]
    warped = align.warp_affine(mask[..., None], align.invert(face.matrix), (w, h), mode="bilinear", padding="zeros")[..., 0]
    assert np.array_equal(out[warped <= 0], photo[warped <= 0])
    strong = warped > 0.99
    assert strong.sum() > 1000 and (out != photo).any(2)[strong].mean() > 0.99


# ---- (b) the mask itself --------------------------------------------------------------------------


def test_face_mask_range_centre_and_border():
    outline = facemask.template_ellipse(SIZE)
    for res in (SIZE, 4 * SIZE):
        mask = facemask.face_mask(outline, SIZE, res)
        assert mask.shape == (res, res) and mask.dtype == np.float32
        assert mask.min() >= 0.0 and mask.max() <= 1.0
        c = (outline.mean(0) * res / SIZE).astype(int)
        assert mask[c[1], c[0]] == 1.0
        border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
        assert not border.any()
        assert (mask <= align.feather_mask((res, res)) + 1e-7).all()
        # 0 beyond the dilated outline, 1 well inside it
        ys, xs = np.mgrid[0:res, 0:res]
        q = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1) * SIZE / res
        d = facemask.polygon_signed_distance(outline, q).reshape(res, res)
        size = np.sqrt(facemask.polygon_area(outline))
        assert not mask[d < -facemask.DILATE * size - 1e-6].any()
        assert (mask[d > facemask.FEATHER * size] == 1.0).all()


def test_face_mask_is_clamped_to_the_frame():
    """An outline larger than the frame: the mask still falls to 0 at the frame's border."""
    big = np.array([[-10.0, -10.0], [SIZE + 10.0, -10.0], [SIZE + 10.0, SIZE + 10.0], [-10.0, SIZE + 10.0]])
    mask = facemask.face_mask(big, SIZE)
    np.testing.assert_array_equal(mask, np.minimum(1.0, align.feather_mask((SIZE, SIZE))))


def test_polygon_helpers():
    square = np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0]])
    assert facemask.polygon_area(square) == 16.0
    d = facemask.polygon_signed_distance(square, np.array([[2.0, 2.0], [5.0, 2.0], [2.0, 1.0]]))
    np.testing.assert_allclose(d, [2.0, -1.0, 1.0])
    filled = facemask.fill_polygon(square, (8, 8), scale=2.0)
    assert filled.sum() == 64 and filled.all()
    assert facemask.fill_polygon(square, (10, 10)).sum() == 16


def test_frame_mask_is_the_old_feathered_frame():
    tpl = align.load_template()
    kp = align.apply(np.array([[1.0, 0.0, 10.0], [0.0, 1.0, 5.0]]), tpl.points)
    (face,) = cut_faces(np.zeros((300, 300, 3), np.uint8), [Detection(1.0, (0, 0, 1, 1), kp)], SIZE)
    mask, info = paste_mask(face, 128, "frame")
    np.testing.assert_array_equal(mask, align.feather_mask((128, 128)))
    assert info["paste_mask"] == "frame" and 0.6 < info["mask_area_fraction"] < 0.8
    with pytest.raises(ValueError, match="paste mask"):
        paste_mask(face, 128, "hair")


# ---- (c) the keypoint-ellipse fallback -------------------------------------------------------------


def synthetic_face(photo_side: int = 300):
    """A 'detection' whose keypoints are the template's, scaled into a grey photo."""
    tpl = align.load_template()
    kp = align.apply(np.array([[1.2, 0.0, 40.0], [0.0, 1.2, 20.0]]), tpl.points)
    return np.full((photo_side, photo_side, 3), 100, np.uint8), Detection(1.0, (0, 0, 1, 1), kp)


def test_without_a_mesh_the_keypoint_ellipse_is_the_outline():
    photo, det = synthetic_face()
    (face,) = cut_faces(photo, [det], SIZE)  # no mesh
    assert face.outline_source == "keypoint_ellipse"
    kp_frame = align.apply(face.matrix, det.keypoints)
    assert (facemask.polygon_signed_distance(face.outline, kp_frame[:4]) > 0).all()  # eyes, nose, mouth inside
    out, _ = paste_faces(photo, [face], [np.full((SIZE, SIZE, 3), 250, np.uint8)], fidelity=0.0, match_colour=False)
    outside, inside = frame_pixels_outside_outline(face, photo.shape, support_margin(face))
    assert outside.sum() > 5000 and (out[outside] == 100).all()
    assert (out[inside] == 250).all()


@needs_detector
def test_a_failing_mesh_falls_back_to_the_ellipse(monkeypatch):
    monkeypatch.setattr(facemask.FaceMesh, "ovals", lambda self, image: [])
    face, out, info = restore_whole(small_face_photo())
    assert face.outline_source == "keypoint_ellipse" and info["faces"][0]["mask_source"] == "keypoint_ellipse"
    photo = small_face_photo()
    outside, inside = frame_pixels_outside_outline(face, photo.shape, support_margin(face))
    assert outside.sum() > 5000 and not (out != photo).any(2)[outside].any()
    assert (out != photo).any(2)[inside].mean() > 0.99


@needs_detector
def test_a_mesh_oval_of_another_face_is_rejected(monkeypatch):
    """The mesh must describe the detected face: an oval that misses its eyes is not used."""
    real = facemask.FaceMesh.ovals
    monkeypatch.setattr(facemask.FaceMesh, "ovals", lambda self, image: [o + [120.0, 0.0] for o in real(self, image)])
    face, _, _ = restore_whole(small_face_photo())
    assert face.outline_source == "keypoint_ellipse"


def test_no_mediapipe_means_the_ellipse(monkeypatch):
    import odedit.detect as detect

    def missing():
        raise detect.DetectorUnavailable("no mediapipe")

    monkeypatch.setattr(detect, "_import_mediapipe", missing)
    assert facemask.mesh_or_none() is None

    class OneFace:
        def detect(self, image):
            return [synthetic_face()[1]]

    photo, _ = synthetic_face()
    job = plan_photo(photo, SIZE, lambda i: i, detector=OneFace())  # opens no mesh, cannot
    assert job.faces[0].outline_source == "keypoint_ellipse"
    _, info = finish_photo(job, [np.full((SIZE, SIZE, 3), 250, np.uint8)])
    assert info["faces"][0]["mask_source"] == "keypoint_ellipse"


def test_finish_photo_records_the_gate_without_a_detector():
    """low_band reaches the paste and restore.json's face entry, with the share kept: the gate
    refuses most of a flat grey 'restoration' of a clean synthetic face; 'off' keeps all of it."""

    class OneFace:
        def detect(self, image):
            return [synthetic_face()[1]]

    photo, _ = synthetic_face()
    job = plan_photo(photo, SIZE, lambda i: i, detector=OneFace(), mesh=False)  # False: no mesh, the ellipse
    grey = [np.full((SIZE, SIZE, 3), 250, np.uint8)]
    out_local, local = finish_photo(job, grey, low_band="local", match_colour=False)
    out_off, off = finish_photo(job, grey, low_band="off", match_colour=False)
    assert (local["faces"][0]["low_band"], off["faces"][0]["low_band"]) == ("local", "off")
    assert local["faces"][0]["restoration_kept"] < 0.5 and off["faces"][0]["restoration_kept"] == 1.0
    err = lambda out: np.abs(out.astype(int) - photo.astype(int)).mean()
    assert err(out_local) < 0.5 * err(out_off)
    with pytest.raises(ValueError, match="low band"):
        finish_photo(job, grey, low_band="coarse", match_colour=False)


@needs_detector
def test_keypoint_ellipse_is_close_to_the_mesh_oval():
    from odedit.detect import FaceDetector

    photo = np.asarray(Image.open(FACE).convert("RGB"))
    with FaceDetector() as det, facemask.FaceMesh() as mesh:
        (found,) = det.detect(photo)
        (face,) = cut_faces(photo, [found], SIZE, mesh=mesh)
    assert face.outline_source == "face_mesh"
    a = facemask.fill_polygon(face.outline, (256, 256), 4.0)
    b = facemask.fill_polygon(facemask.keypoint_ellipse(found.keypoints, face.matrix), (256, 256), 4.0)
    assert (a & b).sum() / (a | b).sum() > 0.75


def test_template_ellipse_for_aligned_crops():
    tpl = align.load_template()
    outline = facemask.template_ellipse(SIZE, tpl)
    kp = align.apply(align.squash_matrix(SIZE), tpl.points)
    assert (facemask.polygon_signed_distance(outline, kp[:4]) > 0).all()
    assert (outline > 0).all() and (outline < SIZE).all()
    assert 0.1 < facemask.polygon_area(outline) / SIZE**2 < 0.3


# ---- mediapipe's console noise ---------------------------------------------------------------------


def test_quiet_native_stderr_drops_the_noise_and_keeps_errors(capfd):
    noise = (
        "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "W0000 00:00:1796252602.737230   25047 inference_feedback_manager.cc:114] Feedback manager requires "
        "a model with a single signature inference. Disabling support for feedback tensors.\n"
    )
    error = "E0000 00:00:1796252602.737230   25047 calculator_graph.cc:887] INTERNAL: a real error\n"
    with pytest.raises(RuntimeError, match="boom"):
        with quiet_native_stderr():
            os.write(2, (noise + error + "plain text\n").encode())
            raise RuntimeError("boom")
    err = capfd.readouterr().err
    assert err == error + "plain text\n"
    os.write(2, b"after\n")  # fd 2 is back
    assert capfd.readouterr().err == "after\n"


@needs_detector
def test_detector_and_mesh_are_quiet(capfd):
    from odedit.detect import FaceDetector

    photo = np.asarray(Image.open(FACE).convert("RGB"))
    capfd.readouterr()
    with FaceDetector() as det, facemask.FaceMesh() as mesh:
        (found,) = det.detect(photo)
        assert mesh.ovals(photo)
        cut_faces(photo, [found], SIZE, mesh=mesh)
    err = capfd.readouterr().err
    assert "XNNPACK" not in err and "Feedback manager" not in err and "absl::InitializeLog" not in err


# ---- the CLI -----------------------------------------------------------------------------------


def run_cli(argv):
    from odedit.cli import restore as restore_cli

    parser = argparse.ArgumentParser()
    restore_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["restore", *argv])
    return args.run(args)


@needs_detector
@pytest.mark.parametrize("paste", ["face", "frame"])
def test_cli_paste_mask_flag_and_photo_line(paste, tiny_unet_dir, tmp_path, capsys):
    photo = small_face_photo()
    Image.fromarray(photo).save(tmp_path / "photo.png")
    out = tmp_path / "out"
    argv = [str(tmp_path / "photo.png"), "-o", str(out), "--model", str(tiny_unet_dir), "--steps", "6",
            "--method", "sdedit", "--paste-mask", paste]
    assert run_cli(argv) == 0
    meta = json.loads((out / "restore.json").read_text())
    (run,) = meta["runs"].values()
    (face,) = meta["images"]["photo.png"]["faces"]
    assert run["paste_mask"] == paste and face["paste_mask"] == paste
    assert (face.get("mask_source") == "face_mesh") == (paste == "face")
    result = np.asarray(Image.open(out / "photo.png"))
    assert np.array_equal(result[:96, :96], photo[:96, :96])
    err = capsys.readouterr().err
    size = round(max(face["box"][2] - face["box"][0], face["box"][3] - face["box"][1]))
    # a clean photo and an untrained model: the gate keeps little of the change, and the line says so
    assert face["restoration_kept"] < 0.5
    line = (f"photo.png: 1 face ({size} px), x{face['upsample_factor']} upscale, stages: detect, restore, "
            f"upsample(lanczos), paste({paste} mask); kept {round(100 * face['restoration_kept'])}% of the "
            "restoration's change (the rest was not explained by the photo's noise; --low-band off keeps all of it)\n")
    assert line in err


@needs_detector
def test_cli_fidelity_and_colour_flags_reach_the_paste_and_restore_json(tiny_unet_dir, tmp_path):
    """--fidelity 0 --no-match-colour gives the plain upsampled paste; the defaults (fidelity 1,
    colour match, local coarse-band gate) give another picture, and on this clean photo one
    closer to the input than with --low-band off (an untrained model's change is refused);
    restore.json records what ran, per run and per face."""
    from odedit.fidelity import DEFAULT_FIDELITY, DEFAULT_LOW_BAND, DEFAULT_MATCH_COLOUR

    assert DEFAULT_LOW_BAND == "local"
    photo = small_face_photo()
    Image.fromarray(photo).save(tmp_path / "photo.png")
    base = [str(tmp_path / "photo.png"), "--model", str(tiny_unet_dir), "--steps", "6", "--method", "sdedit"]
    results = {}
    runs = {"plain": (["--fidelity", "0", "--no-match-colour"], (0.0, False, DEFAULT_LOW_BAND)),
            "default": ([], (DEFAULT_FIDELITY, DEFAULT_MATCH_COLOUR, DEFAULT_LOW_BAND)),
            "gate_off": (["--low-band", "off"], (DEFAULT_FIDELITY, DEFAULT_MATCH_COLOUR, "off"))}
    for name, (extra, want) in runs.items():
        out = tmp_path / name
        assert run_cli([*base, "-o", str(out), *extra]) == 0
        meta = json.loads((out / "restore.json").read_text())
        (run,) = meta["runs"].values()
        (face,) = meta["images"]["photo.png"]["faces"]
        keys = ("fidelity", "match_colour", "low_band")
        assert tuple(run[k] for k in keys) == want == tuple(face[k] for k in keys)
        results[name] = np.asarray(Image.open(out / "photo.png")).astype(int)
    assert np.abs(results["plain"] - results["default"]).mean() > 0.05
    assert np.array_equal(results["plain"][:96, :96], results["default"][:96, :96])  # outside the face: input
    err = {name: np.abs(r - photo).mean() for name, r in results.items()}
    assert err["default"] < 0.5 * err["gate_off"], err


def test_photo_line_wording():
    from odedit.cli.restore import photo_line

    f = lambda w, k, **kw: {"box": [0, 0, w, w * 0.9], "upsample_factor": k, "paste_mask": "face",
                            "mask_source": "face_mesh", **kw}
    entry = {"faces": [f(312, 5), f(140, 3, mask_source="keypoint_ellipse")], "faces_left_out": 1, "upsampler": "lanczos"}
    assert photo_line("photo.jpg", entry) == (
        "photo.jpg: 2 faces (312 px, 140 px), x5 and x3 upscale, 1 left out beyond --max-faces, "
        "stages: detect, restore, upsample(lanczos), paste(face mask, 1 from keypoints: no mesh)")
    assert photo_line("a.png", {"faces": [f(40, 1)], "faces_left_out": 0}) == (
        "a.png: 1 face (40 px), x1 upscale, stages: detect, restore, paste(face mask)")
    assert photo_line("b.png", {"faces": [f(40, 1, restoration_kept=0.6)], "faces_left_out": 0}) == (
        "b.png: 1 face (40 px), x1 upscale, stages: detect, restore, paste(face mask)")
    assert photo_line("c.png", {"faces": [f(40, 1, restoration_kept=0.08), f(50, 1, restoration_kept=0.9)],
                                "faces_left_out": 0}) == (
        "c.png: 2 faces (40 px, 50 px), x1 and x1 upscale, stages: detect, restore, paste(face mask); kept 8% "
        "and 90% of the restoration's change (the rest was not explained by the photo's noise; --low-band off "
        "keeps all of it)")
    assert photo_line("w.png", {"faces": [], "no_face_reason": "20x20 px"}) == "w.png: no face found (too small to search), copied unchanged"


@needs_detector
def test_the_mesh_retries_on_a_smoothed_crop(monkeypatch):
    real = facemask.FaceMesh.ovals
    seen = []

    def first_fails(self, image):
        seen.append(np.asarray(image).copy())
        return [] if len(seen) == 1 else real(self, image)

    monkeypatch.setattr(facemask.FaceMesh, "ovals", first_fails)
    face, _, _ = restore_whole(small_face_photo())
    assert face.outline_source == "face_mesh" and len(seen) == 2
    rough = lambda im: np.abs(np.diff(im.astype(int), axis=1)).mean()
    assert rough(seen[1]) < rough(seen[0])  # the second try saw a smoothed crop
