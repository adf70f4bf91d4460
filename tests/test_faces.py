"""Whole-photo restoration: the detector on a real face, and ``odedit restore --faces auto``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from odedit import align
from odedit.cli import restore as restore_cli
from odedit.cli.common import CLIError
from odedit.detect import Detection, detector_available, merge_detections
from odedit.faces import cut_faces, paste_faces, uses_detection
from odedit.upsample import DiffusersUpsampler, LanczosUpsampler, UpsamplerError, make_upsampler

DATA = Path(__file__).parent / "data"
FACE = DATA / "face_00234.jpg"  # 256 px, cut from a CelebA-HQ sample (see tests/data/README.md)
needs_detector = pytest.mark.skipif(not detector_available(), reason="needs the faces extra (mediapipe 0.10.14)")
FAST = ["--steps", "6", "--preset", "light", "--quiet"]


def run_cli(argv):
    parser = argparse.ArgumentParser()
    restore_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["restore", *argv])
    return args.run(args)


def two_face_photo() -> np.ndarray:
    face = Image.open(FACE).convert("RGB")
    canvas = np.full((260, 520, 3), 128, np.uint8)
    canvas[10:250, 10:250] = np.asarray(face.resize((240, 240), Image.LANCZOS))
    canvas[60:220, 330:490] = np.asarray(face.transpose(Image.FLIP_LEFT_RIGHT).resize((160, 160), Image.LANCZOS))
    return canvas


def test_committed_face_photo_is_small():
    assert FACE.stat().st_size < 100_000


@needs_detector
def test_detector_finds_the_face_and_its_keypoints():
    from odedit.detect import FaceDetector

    img = np.asarray(Image.open(FACE).convert("RGB"))
    with FaceDetector() as det:
        (found,) = det.detect(img)
    assert found.score > 0.8
    kp = dict(zip(["re", "le", "nose", "mouth", "rear", "lear"], found.keypoints))
    x0, y0, x1, y1 = found.box
    assert 0 <= x0 < kp["re"][0] < kp["nose"][0] < kp["le"][0] < x1 <= 256
    assert y0 < kp["re"][1] < kp["nose"][1] < kp["mouth"][1] < y1
    # aligned with the template, the keypoints land where CelebA's frames have them
    tpl = align.load_template()
    (face,) = cut_faces(img, [found], 64, tpl)
    assert face.residual < 3 * tpl.spread[list(tpl.use)].mean()
    eyes_in_frame = align.apply(face.matrix, found.keypoints[:2])
    np.testing.assert_allclose(eyes_in_frame, align.apply(align.squash_matrix(64), tpl.points[:2]), atol=2.0)


@needs_detector
def test_detector_finds_nothing_in_flat_grey_and_noise():
    from odedit.detect import FaceDetector

    rng = np.random.default_rng(0)
    with FaceDetector() as det:
        assert det.detect(np.full((100, 100, 3), 128, np.uint8)) == []
        assert det.detect(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)) == []


# (shape, seed) of seeded uniform-noise images in which the detector found a "face" before the
# noise check (scores 0.52-0.70; the last one on the smoothed retry, 0.72).
NOISE_FACES = [((16, 16), 0), ((24, 24), 4), ((32, 32), 5), ((48, 48), 11), ((128, 128), 5), ((256, 256), 7),
               ((384, 391), 7)]


def noise_image(shape, seed) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


@needs_detector
def test_detector_finds_no_face_in_seeded_noise_and_none_in_tiny_photos():
    """Pure pixel noise gives no face at any size (the neighbour-correlation check), photos under
    MIN_PHOTO_SIDE are not searched; real faces, even small ones, are still found."""
    from odedit.detect import MIN_PHOTO_SIDE, FaceDetector

    face = Image.open(FACE).convert("RGB")
    with FaceDetector() as det:
        for shape, seed in NOISE_FACES:
            assert det.detect(noise_image(shape, seed)) == [], (shape, seed)
        for side in (16, 32, 48, 128):  # 20 seeds a size
            for seed in range(20):
                assert det.detect(noise_image((side, side), seed)) == [], (side, seed)
        tiny = np.asarray(face.resize((MIN_PHOTO_SIDE - 8,) * 2, Image.LANCZOS))
        assert det._detect_once(tiny) and det.detect(tiny) == []  # a face, but under the minimum
        (small,) = det.detect(np.asarray(face.resize((MIN_PHOTO_SIDE,) * 2, Image.LANCZOS)))
        canvas = np.full((128, 128, 3), 128, np.uint8)
        canvas[40:56, 40:56] = np.asarray(face.resize((16, 16), Image.LANCZOS))  # a 16 px face in a photo
        (in_photo,) = det.detect(canvas)
    assert small.score > 0.8 and 40 <= in_photo.box[0] < in_photo.box[2] <= 56


@needs_detector
@pytest.mark.parametrize("shape, seed", [((20, 20), 8), ((24, 24), 4)], ids=["20px", "24px"])
def test_cli_copies_a_tiny_noise_photo_unchanged_and_says_why(shape, seed, tiny_unet_dir, tmp_path, capsys):
    """The issue's case: a tiny random-noise image was detected as a face and altered."""
    noise = noise_image(shape, seed)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    out = tmp_path / "out"
    assert run_cli([str(tmp_path / "noise.png"), "-o", str(out), "--model", str(tiny_unet_dir), *FAST]) == 0
    assert np.array_equal(np.asarray(Image.open(out / "noise.png")), noise)
    entry = json.loads((out / "restore.json").read_text())["images"]["noise.png"]
    assert entry["status"] == "no_face_copied_unchanged" and "under the 32 px" in entry["no_face_reason"]
    err = capsys.readouterr().err
    why = f"{shape[1]}x{shape[0]} px, under the 32 px a side that face detection needs"
    assert f"noise.png ({why}; --faces aligned restores it as a face crop)" in err


def test_merge_detections_keeps_best_of_overlaps():
    kp = np.zeros((6, 2))
    a = Detection(0.9, (0, 0, 10, 10), kp)
    b = Detection(0.95, (1, 1, 11, 11), kp)
    c = Detection(0.6, (50, 50, 60, 60), kp)
    assert merge_detections([a, b, c]) == [b, c]


def test_uses_detection():
    assert uses_detection("auto", (100, 80, 3), 64)
    assert not uses_detection("auto", (64, 64, 3), 64)
    assert not uses_detection("aligned", (100, 80, 3), 64)
    with pytest.raises(ValueError):
        uses_detection("sometimes", (1, 1, 3), 64)


def test_cut_and_paste_of_unchanged_crops_keeps_pixels_outside_the_frames():
    photo = np.asarray(Image.open(FACE).convert("RGB"))
    tpl = align.load_template()
    # a synthetic 'detection': the template mapped into the photo, small enough to leave a border
    to_photo = np.array([[0.6, 0.0, 60.0], [0.0, 0.6, 40.0]])
    kp = align.apply(to_photo, tpl.points)
    det = Detection(1.0, (0, 0, 1, 1), kp)
    (face,) = cut_faces(photo, [det], 16, tpl)
    # the plain paste (no fidelity step): what the 16 px round trip alone does
    out, factors = paste_faces(photo, [face], [face.crop], fidelity=0.0, match_colour=False)
    corners = align.frame_corners_in_photo(face.matrix, 16)
    x0, y0 = np.floor(corners.min(0)).astype(int)
    x1, y1 = np.ceil(corners.max(0)).astype(int)
    assert factors == [needed_factor_of(face)]
    assert np.array_equal(out[y1 + 1 :], photo[y1 + 1 :]) and np.array_equal(out[:, x1 + 1 :], photo[:, x1 + 1 :])
    inside = np.abs(out[y0:y1, x0:x1].astype(int) - photo[y0:y1, x0:x1]).mean()
    assert inside > 1.0  # the 16 px frame comes back blurred: the inside changed


def needed_factor_of(face):
    from odedit.upsample import needed_factor

    return needed_factor(align.scale_of(face.matrix))


# ---- the CLI on whole photos -----------------------------------------------------------------


@needs_detector
def test_cli_restores_both_faces_of_a_two_face_photo(tiny_unet_dir, tmp_path):
    photo = two_face_photo()
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photo).save(src / "pair.png")
    Image.fromarray(np.full((90, 120, 3), 128, np.uint8)).save(src / "wall.png")  # no face
    out = tmp_path / "out"
    # --low-band off: the check below is that each face is pasted; with the gate on, an untrained
    # model's change to this clean photo is (rightly) refused
    assert run_cli([str(src), "-o", str(out), "--model", str(tiny_unet_dir), *FAST, "--method", "sdedit",
                    "--low-band", "off"]) == 0
    result = np.asarray(Image.open(out / "pair.png"))
    assert result.shape == photo.shape  # whole photo out at its own size
    meta = json.loads((out / "restore.json").read_text())
    entry = meta["images"]["pair.png"]
    assert entry["mode"] == "faces" and entry["status"] == "restored" and len(entry["faces"]) == 2
    assert len({f["seed"] for f in entry["faces"]}) == 2
    diff = np.abs(result.astype(int) - photo.astype(int)).max(2)
    changed = np.zeros(photo.shape[:2], bool)
    for f in entry["faces"]:
        x0, y0, x1, y1 = (int(round(v)) for v in f["box"])
        assert diff[y0:y1, x0:x1].mean() > 5  # each face was changed
        corners = np.array(f["frame_corners"])
        cx0, cy0 = np.floor(corners.min(0)).astype(int)
        cx1, cy1 = np.ceil(corners.max(0)).astype(int) + 1
        changed[max(cy0, 0) : cy1, max(cx0, 0) : cx1] = True
    assert (~changed).sum() > 1000
    assert diff[~changed].max() == 0  # pixels far from the faces are untouched
    # the photo without a face: copied through unchanged, and said so
    assert np.array_equal(np.asarray(Image.open(out / "wall.png")), np.full((90, 120, 3), 128, np.uint8))
    assert meta["images"]["wall.png"]["status"] == "no_face_copied_unchanged"
    (run,) = meta["runs"].values()
    assert run["no_face"] == [str(src / "wall.png")] and run["faces"] == "auto"


@needs_detector
def test_cli_max_faces_keeps_the_best_and_reports_the_rest(tiny_unet_dir, tmp_path, capsys):
    """Faces beyond --max-faces: the best are restored, the others counted in the photo's
    restore.json entry and named on stderr, a line per photo."""
    Image.fromarray(two_face_photo()).save(tmp_path / "pair.png")
    Image.fromarray(two_face_photo()[:, :260]).save(tmp_path / "single.png")  # one face: nothing left out
    out = tmp_path / "out"
    argv = [str(tmp_path / "pair.png"), str(tmp_path / "single.png"), "-o", str(out), "--model", str(tiny_unet_dir),
            *FAST, "--max-faces", "1"]
    assert run_cli(argv) == 0
    images = json.loads((out / "restore.json").read_text())["images"]
    (face,) = images["pair.png"]["faces"]
    assert face["box"][0] < 260  # the larger, left face scores higher
    assert images["pair.png"]["faces_left_out"] == 1 and images["single.png"]["faces_left_out"] == 0
    err = capsys.readouterr().err
    assert "1 photo(s) had more faces than --max-faces 1; the lower-scoring ones were left unrestored:" in err
    assert f"  {tmp_path / 'pair.png'}: 2 faces found, 1 restored, 1 left out\n" in err
    assert "single.png:" not in err


def test_model_sized_inputs_are_aligned_crops_in_auto_mode(tiny_unet_dir, tmp_path, monkeypatch):
    """No detector is needed (or loaded) for crops already at the model's size."""
    import odedit.detect as detect

    def boom(*a, **k):
        raise AssertionError("the detector must not be loaded for model-sized crops")

    monkeypatch.setattr(detect.FaceDetector, "__init__", boom)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    out = tmp_path / "out"
    assert run_cli([str(tmp_path / "c.png"), "-o", str(out), "--model", str(tiny_unet_dir), *FAST]) == 0
    assert json.loads((out / "restore.json").read_text())["images"]["c.png"]["mode"] == "aligned"


def test_missing_detector_gives_an_install_hint(tiny_unet_dir, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mediapipe(name, *args, **kwargs):
        if name == "mediapipe" or name.startswith("mediapipe."):
            raise ImportError("No module named 'mediapipe'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mediapipe)
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(tmp_path / "photo.png")
    with pytest.raises(CLIError, match=r"odedit\[faces\].*--faces aligned"):
        run_cli([str(tmp_path / "photo.png"), "-o", str(tmp_path / "o"), "--model", str(tiny_unet_dir), *FAST])
    assert not list((tmp_path / "o").glob("*.png"))


def test_unloadable_upsampler_fails_before_any_work(tiny_unet_dir, tmp_path):
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(tmp_path / "photo.png")
    with pytest.raises(CLIError, match="cannot load upscaling pipeline"):
        run_cli([str(tmp_path / "photo.png"), "-o", str(tmp_path / "o"), "--model", str(tiny_unet_dir), *FAST,
                 "--upsampler", str(tmp_path / "no-such-model")])
    assert not list((tmp_path / "o").glob("*.png"))


def test_unloadable_upsampler_of_an_aligned_crop_fails_before_any_restoration(tiny_unet_dir, tmp_path, monkeypatch):
    """--faces aligned --keep-size upscales with --upsampler: a model that cannot load fails first."""
    from odedit.restorers import Restorer

    def no_restoring(*a, **kw):
        raise AssertionError("restored before the upsampler was loaded")

    monkeypatch.setattr(Restorer, "restore_with_status", no_restoring)
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(tmp_path / "crop.png")
    with pytest.raises(CLIError, match="cannot load upscaling pipeline"):
        run_cli([str(tmp_path / "crop.png"), "-o", str(tmp_path / "o"), "--model", str(tiny_unet_dir), *FAST,
                 "--faces", "aligned", "--keep-size", "--upsampler", str(tmp_path / "no-such-model")])


# ---- upsamplers ----------------------------------------------------------------------------------


def test_lanczos_upsampler_sizes():
    face = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    (big,) = LanczosUpsampler().upsample([face], 3)
    assert big.shape == (48, 48, 3) and big.dtype == np.uint8
    assert make_upsampler("lanczos").name == "lanczos"


class FakeUpscalePipeline:
    """Stands in for StableDiffusionUpscalePipeline: records the call, returns a 4x image."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompt, image, num_inference_steps, generator):
        self.calls.append((prompt, image[0].size, num_inference_steps, generator.initial_seed()))

        class Out:
            images = [image[0].resize((image[0].width * 4, image[0].height * 4))]

        return Out()


def test_diffusers_upsampler_adapter_converts_and_seeds_each_face():
    pipe = FakeUpscalePipeline()
    up = DiffusersUpsampler(pipe, prompt="a face", steps=7, seed=3)
    faces = [np.full((16, 16, 3), v, np.uint8) for v in (10, 200)]
    outs = up.upsample(faces, factor=10)
    assert [o.shape for o in outs] == [(64, 64, 3), (64, 64, 3)]
    assert outs[1][0, 0, 0] == 200
    assert pipe.calls == [("a face", (16, 16), 7, 3), ("a face", (16, 16), 7, 4)]


def test_diffusers_upsampler_rejects_bad_output():
    class Shrinker(FakeUpscalePipeline):
        def __call__(self, prompt, image, num_inference_steps, generator):
            class Out:
                images = [image[0].resize((4, 4))]

            return Out()

    with pytest.raises(UpsamplerError, match="returned a 4x4 image"):
        DiffusersUpsampler(Shrinker()).upsample([np.zeros((16, 16, 3), np.uint8)], 4)


def test_paste_faces_tops_up_a_fixed_factor_upsampler_with_lanczos(monkeypatch):
    """A x4 model asked for more: the paste gets the frame at the full factor (Lanczos tops up)."""
    import odedit.align as A

    photo = np.full((300, 300, 3), 100, np.uint8)
    tpl = align.load_template()
    kp = align.apply(np.array([[0.7, 0.0, 20.0], [0.0, 0.7, 10.0]]), tpl.points)
    (face,) = cut_faces(photo, [Detection(1.0, (0, 0, 1, 1), kp)], 16, tpl)
    f = needed_factor_of(face)
    assert f > 4
    seen = []
    real = A.paste_back
    monkeypatch.setattr("odedit.faces.align.paste_back", lambda p, f, m, s, **kw: seen.append(f.shape) or real(p, f, m, s, **kw))
    pipe = FakeUpscalePipeline()
    out, factors = paste_faces(photo, [face], [np.full((16, 16, 3), 200, np.uint8)], DiffusersUpsampler(pipe),
                               fidelity=0.0, match_colour=False)
    assert factors == [f] and len(pipe.calls) == 1 and seen == [(16 * f, 16 * f, 3)]
    assert out[90, 80, 0] == 200 and out[250, 250, 0] == 100  # frame centre; outside the frame


@needs_detector
def test_detector_retries_on_a_smoothed_copy_of_a_noisy_photo():
    from odedit.corruptions import corrupt
    from odedit.detect import FaceDetector

    clean = np.asarray(Image.open(FACE).convert("RGB").resize((384, 384), Image.LANCZOS))
    noisy = corrupt(clean, "gaussian_noise", 4, np.random.default_rng(0))
    with FaceDetector() as det:
        assert det._detect_once(noisy) == []  # BlazeFace alone misses it
        (found,) = det.detect(noisy)
        (ref,) = det.detect(clean)
    assert found.smoothed and not ref.smoothed
    assert np.abs(found.keypoints[:4] - ref.keypoints[:4]).max() < 15  # px of 384


def _aligned_job(photo: np.ndarray, size: int, fit: str):
    from odedit.faces import plan_photo

    return plan_photo(photo, size, lambda i: 7, faces_mode="aligned", fit=fit)


@pytest.mark.parametrize("fit", ["stretch", "crop"])
def test_aligned_crops_keep_the_input_where_the_change_is_not_its_noise(fit):
    """An aligned crop is gated like a pasted face (the whole crop is the face): a change the input's
    noise cannot explain is refused, a change that removes its noise is kept, and ``--keep-size``
    keeps a clean input's detail finer than the model frame."""
    from odedit.faces import finish_aligned

    clean = np.asarray(Image.open(FACE).convert("RGB").resize((64, 80), Image.LANCZOS), dtype=np.float32)
    noise = np.random.default_rng(0).normal(0.0, 25.0, clean.shape)
    noisy = np.clip(np.rint(clean + noise), 0, 255).astype(np.uint8)
    clean = clean.astype(np.uint8)
    for photo, restored_from, should_keep in ((clean, "other", False), (noisy, "clean", True)):
        job = _aligned_job(photo, 16, fit)
        truth = _aligned_job(clean, 16, fit).crops[0]
        other = np.ascontiguousarray(truth[::-1])  # a wrong face: upside down
        frame = truth if restored_from == "clean" else other
        out, info = finish_aligned(job, frame, fit=fit)
        assert out.shape == (16, 16, 3) and info["mode"] == "aligned" and info["low_band"] == "local"
        err = lambda a, b: np.abs(a.astype(float) - b).mean()  # noqa: E731
        if should_keep:  # the restoration removed the input's noise: most of it stays
            assert info["restoration_kept"] > 0.5 and err(out, truth) < 0.6 * err(job.crops[0], truth)
        else:  # a clean input and a restoration that is another face: refused
            assert info["restoration_kept"] < 0.2 and err(out, job.crops[0]) < 0.2 * err(frame, job.crops[0])
        raw, raw_info = finish_aligned(job, frame, fit=fit, fidelity=0.0, match_colour=False)
        assert np.array_equal(raw, frame) and raw_info["restoration_kept"] == 1.0
    # at the input's size: a clean crop restored as itself comes back with its own fine detail
    job = _aligned_job(clean, 16, fit)
    big, _ = finish_aligned(job, job.crops[0], keep_size=True, fit=fit)
    plain, _ = finish_aligned(job, job.crops[0], keep_size=True, fit=fit, fidelity=0.0, match_colour=False)
    assert big.shape == plain.shape == clean.shape
    assert err(big, clean) < 0.5 * err(plain, clean)
    if fit == "crop":  # outside the central square the input is untouched
        assert np.array_equal(big[:8], clean[:8]) and np.array_equal(big[-8:], clean[-8:])


def test_finish_aligned_options_and_upsampling():
    """fidelity 0 with the colour match moves only the mean colour; a bad gate mode is refused;
    --keep-size upscales with the given upsampler (a factory is called once) to the input's size,
    also for an input smaller than the model, and records the factor."""
    from odedit.faces import finish_aligned

    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    job = _aligned_job(photo, 16, "stretch")
    frame = np.clip(job.crops[0].astype(int) + 30, 0, 255).astype(np.uint8)  # brighter
    out, info = finish_aligned(job, frame, fidelity=0.0, match_colour=True)
    assert info["restoration_kept"] == 1.0 and abs(out.astype(float).mean() - job.crops[0].mean()) < 1.0
    assert np.abs(np.diff(out.astype(int) - frame.astype(int), axis=1)).max() <= 2  # a shift, no more
    with pytest.raises(ValueError, match="low band"):
        finish_aligned(job, frame, low_band="bogus")
    calls = []

    class Nearest:
        name = "nearest"

        def upsample(self, faces, factor):
            calls.append(factor)
            return [np.repeat(np.repeat(f, factor, 0), factor, 1) for f in faces]

    big, info = finish_aligned(job, frame, lambda: Nearest(), keep_size=True, fidelity=0.0, match_colour=False)
    assert big.shape == photo.shape and calls == [4] and info["upsample_factor"] == 4
    small = _aligned_job(photo[:10, :12], 16, "stretch")
    out, info = finish_aligned(small, frame, Nearest(), keep_size=True)
    assert out.shape == (10, 12, 3) and info["upsample_factor"] == 1 and calls == [4]
