"""odedit.pipeline (photos -> faces -> batches -> restorer -> paste), odedit.manifest
(restore.json) and the seed rule in odedit.rng: the CLI's results are the pipeline's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from odedit import manifest
from odedit.cli import main
from odedit.detect import detector_available
from odedit.pipeline import DIVERGED, Pipeline, PipelineOptions, Progress, Stage
from odedit.rng import face_seed, restore_seed

DATA = Path(__file__).parent / "data"
SETTINGS = ["--steps", "6", "--preset", "light", "--langevin-steps", "1", "--dtype", "float32", "--device", "cpu"]


def tiny_restorer(model_dir):
    """The restorer `odedit restore --model MODEL_DIR *SETTINGS` runs."""
    from odedit.cli import build_parser
    from odedit.cli.restore import build_config
    from odedit.models import load_model
    from odedit.restorers import Restorer

    config = build_config(build_parser().parse_args(["restore", "in", "-o", "out", *SETTINGS]))
    return Restorer(load_model(model_dir, device="cpu", dtype=torch.float32), config)


def inputs(folder: Path, photo: bool) -> dict[str, np.ndarray]:
    """Three model-sized crops, a 20 px image (too small to search) and, with the detector, a
    two-face photo; written to ``folder`` and returned by name."""
    rng = np.random.default_rng(3)
    images = {f"crop{i}.png": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for i in range(3)}
    images["small.png"] = np.full((20, 20, 3), 90, np.uint8)
    if photo:
        from test_faces import two_face_photo

        images["pair.png"] = two_face_photo()
    folder.mkdir()
    for name, image in images.items():
        Image.fromarray(image).save(folder / name)
    return images


def test_cli_outputs_are_the_pipeline_api_outputs(tiny_unet_dir, tmp_path, single_thread):
    """`odedit restore` writes exactly what Pipeline.run yields, and records its info."""
    images = inputs(tmp_path / "in", photo=detector_available())
    out = tmp_path / "out"
    assert main(["restore", str(tmp_path / "in"), "-o", str(out), "--model", str(tiny_unet_dir), *SETTINGS,
                 "--batch-size", "2", "--seed", "4", "--quiet"]) == 0
    entries = json.loads((out / "restore.json").read_text())["images"]
    with Pipeline(tiny_restorer(tiny_unet_dir), PipelineOptions(seed=4, batch_size=2)) as pipeline:
        got = list(pipeline.run(sorted(images.items())))
    assert sorted(item[0] for item, _, _ in got) == sorted(images)
    for (name, _), result, info in got:
        assert np.array_equal(np.asarray(Image.open(out / name)), result), name
        entry = entries[name]
        assert {k: entry[k] for k in ("seed", "input_size", "mode", "status")} == {
            k: info[k] for k in ("seed", "input_size", "mode", "status")}
        assert entry.get("faces", []) == json.loads(json.dumps(info.get("faces", []), default=str))
        assert info["seed"] == face_seed(4, name) == restore_seed(4, name)
    assert entries["small.png"]["status"] == "no_face_copied_unchanged"
    if "pair.png" in entries:
        assert [f["seed"] for f in entries["pair.png"]["faces"]] == [face_seed(4, "pair.png", i) for i in range(2)]


def test_batch_size_changes_no_result(tiny_unet_dir, tmp_path, single_thread):
    """Crops batched across photos, one at a time, or each photo's crops alone: the same
    seeds, the same faces, the same pixels (batched convolutions may round the last bit)."""
    images = sorted(inputs(tmp_path / "in", photo=detector_available()).items())
    restorer = tiny_restorer(tiny_unet_dir)
    runs = []
    for batch_size in (1, 3, None):
        with Pipeline(restorer, PipelineOptions(batch_size=batch_size)) as pipeline:
            runs.append({item[0]: (result, info) for item, result, info in pipeline.run(images)})
    for other in runs[1:]:
        for name, (result, info) in runs[0].items():
            assert np.abs(result.astype(int) - other[name][0].astype(int)).max() <= 1
            assert info == other[name][1]


class FakeRestorer:
    """Returns its input; a crop whose generator was seeded with ``bad_seed`` diverges."""

    def __init__(self, bad_seed=None, calls=3):
        self.model = type("M", (), {"sample_size": 16, "device": torch.device("cpu")})()
        self.config = type("C", (), {"nfe": calls})()
        self.bad_seed = bad_seed
        self.batches = []

    def restore_with_status(self, x, generator, callback=None):
        self.batches.append(x.shape[0])
        for _ in range(self.config.nfe):
            if callback is not None:
                callback(1)
        return x, torch.tensor([g.initial_seed() == self.bad_seed for g in generator])


class Recorder(Progress):
    def __init__(self):
        self.events = []

    def stage(self, stage):
        self.events.append(str(stage))

    def restoring(self, crops, calls):
        self.events.append(f"restoring {crops}x{calls}")
        return super().restoring(crops, calls)

    def batch_done(self):
        self.events.append("batch done")


def crops(*names):
    rng = np.random.default_rng(0)
    return [(n, rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for n in names]


def test_a_diverged_restoration_fails_its_photo_only():
    items = crops("a.png", "bad.png", "c.png")
    fake = FakeRestorer(bad_seed=face_seed(0, "bad.png"))
    got = list(Pipeline(fake, PipelineOptions(batch_size=2)).run(items))
    assert [(item[0], info["status"]) for item, _, info in got] == [
        ("a.png", "restored"), ("bad.png", DIVERGED), ("c.png", "restored")]
    assert got[1][1] is None and got[1][2]["seed"] == face_seed(0, "bad.png")
    assert np.array_equal(got[0][1], items[0][1]) and fake.batches == [2, 1]


def test_items_are_read_as_needed_and_progress_is_reported():
    pulled = []

    def lazily():
        for item in crops("a.png", "b.png", "c.png"):
            pulled.append(item[0])
            yield item

    progress = Recorder()
    results = Pipeline(FakeRestorer(), PipelineOptions(batch_size=2), progress=progress).run(lazily())
    next(results)
    assert pulled == ["a.png", "b.png"]  # no photo is read before its crops are needed
    list(results)
    assert progress.events == ["restoring 2 face(s)", "restoring 2x3", "batch done",
                               "restoring 1 face(s)", "restoring 1x3", "batch done"]
    assert str(Stage("paste", "p.jpg", 1, 3)) == "p.jpg: pasting face 2/3"
    assert str(Stage("detect", "p.jpg")) == "p.jpg: detecting faces"


def test_the_seed_rule():
    from odedit.cli.restore import image_seed

    assert face_seed(7, "x.png") == face_seed(7, "x.png", 0) == restore_seed(7, "x.png") == image_seed(7, "x.png")
    assert face_seed(7, "x.png", 2) == restore_seed(7, "x.png#face2") != face_seed(7, "x.png", 1)


def test_options_are_checked_and_recorded():
    with pytest.raises(ValueError, match="faces mode"):
        PipelineOptions(faces="some")
    with pytest.raises(ValueError, match="paste mask"):
        PipelineOptions(paste_mask="hair")
    with pytest.raises(ValueError, match="batch size"):
        PipelineOptions(batch_size=0)
    with pytest.raises(ValueError, match="low band"):
        PipelineOptions(low_band="coarse")
    assert PipelineOptions(seed=3).settings()["base_seed"] == 3
    assert PipelineOptions(low_band="global").settings()["low_band"] == "global"


def test_manifest_merges_runs_and_records_how_they_ended(tmp_path):
    a = manifest.RunManifest(tmp_path, "run-a", {"method": "odedit"})
    b = manifest.RunManifest(tmp_path, "run-b", {"method": "sdedit"})
    info = {"seed": 1, "input_size": [20, 10], "mode": "faces", "status": "no_face_copied_unchanged", "faces": [],
            "faces_left_out": 0, "no_face_reason": "small"}
    a.add_image("x.png", manifest.image_entry("in/x.png", "run-a", info, (10, 20, 3)))
    b.add_image("y.png", manifest.image_entry("in/y.png", "run-b", {**info, "mode": "aligned", "status": "restored"}))
    a.end("stopped", [("in/z.png", "broken")], "disk full")
    b.end("complete")
    a.save()
    b.save()
    data = manifest.load(tmp_path / manifest.SIDECAR)
    assert set(data["runs"]) == {"run-a", "run-b"} and set(data["images"]) == {"x.png", "y.png"}
    assert data["runs"]["run-a"]["status"] == "stopped" and data["runs"]["run-a"]["error"] == "disk full"
    assert data["runs"]["run-a"]["failures"] == [{"input": "in/z.png", "error": "broken"}]
    assert data["runs"]["run-a"]["no_face"] == ["in/x.png"] and data["runs"]["run-b"]["no_face"] == []
    x = data["images"]["x.png"]
    assert "faces" not in x and x["faces_left_out"] == 0 and x["output_size"] == [20, 10]
    assert "faces_left_out" not in data["images"]["y.png"]
    assert not [p for p in tmp_path.iterdir() if p.name != manifest.SIDECAR]  # no temp files left
    (tmp_path / manifest.SIDECAR).write_text("{not json")
    with pytest.raises(manifest.ManifestError, match="not valid JSON"):
        manifest.load(tmp_path / manifest.SIDECAR)
    with pytest.raises(ValueError, match="run status"):
        a.end("paused")
