"""End-to-end tests of ``odedit restore`` with a tiny random UNet saved to a temp dir."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from odedit.cli import restore as restore_cli
from odedit.cli.common import CLIError
from odedit.restorers import DEFAULT_PRESET, ODEditConfig, SDEditConfig
from odedit.unets import build_unet

FAST = ["--steps", "6", "--preset", "light", "--quiet", "--faces", "aligned"]


@pytest.fixture()
def tiny_model(tiny_unet_dir):
    return tiny_unet_dir


@pytest.fixture()
def faces(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(folder / f"face{i}.png")
    return folder


def run_cli(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    restore_cli.add_parser(sub)
    args = parser.parse_args(["restore", *argv])
    return args.run(args)


def read(path):
    return np.asarray(Image.open(path))


def test_folder_in_folder_out_with_sidecar(tiny_model, faces, tmp_path):
    out = tmp_path / "out"
    assert run_cli([str(faces), "-o", str(out), "--model", str(tiny_model), *FAST]) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [f"face{i}.png" for i in range(5)]
    assert read(out / "face0.png").shape == (16, 16, 3)  # model resolution
    meta = json.loads((out / "restore.json").read_text())
    (run_id, run), = meta["runs"].items()
    assert run["method"] == "odedit"
    assert run["config"]["steps"] == 6
    assert run["config"]["total_langevin_steps"] == 100
    assert run["model"] == str(tiny_model.resolve())
    from odedit.provenance import code_identity

    assert {k: run[k] for k in ("odedit_version", "git_commit", "git_dirty")} == code_identity()
    assert set(meta["images"]) == set(names)
    assert all(entry["run"] == run_id for entry in meta["images"].values())
    seeds = {entry["seed"] for entry in meta["images"].values()}
    assert len(seeds) == 5  # one seed per image
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_same_seed_same_result_regardless_of_batch_size(tiny_model, faces, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run_cli([str(faces), "-o", str(a), "--model", str(tiny_model), "--batch-size", "1", *FAST]) == 0
    assert run_cli([str(faces), "-o", str(b), "--model", str(tiny_model), "--batch-size", "4", *FAST]) == 0
    # A single file alone gets the same noise as inside the folder (seed from the name).
    assert run_cli([str(faces / "face3.png"), "-o", str(c), "--model", str(tiny_model), *FAST]) == 0
    for i in range(5):
        x, y = read(a / f"face{i}.png").astype(int), read(b / f"face{i}.png").astype(int)
        # Batched convolutions may round differently in the last bits: allow one grey level.
        assert np.abs(x - y).max() <= 1
    assert np.abs(read(a / "face3.png").astype(int) - read(c / "face3.png").astype(int)).max() <= 1


def test_different_seed_changes_sdedit_result(tiny_model, faces, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = [str(faces / "face0.png"), "--model", str(tiny_model), "--method", "sdedit", *FAST]
    assert run_cli([*common, "-o", str(a), "--seed", "1"]) == 0
    assert run_cli([*common, "-o", str(b), "--seed", "2"]) == 0
    assert np.abs(read(a / "face0.png").astype(int) - read(b / "face0.png").astype(int)).max() > 0


def test_keep_size_and_modes(tiny_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (30, 40, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (33, 21), dtype=np.uint8), "L").save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 65535, (18, 18), dtype=np.uint16)).save(folder / "deep.png")
    out = tmp_path / "out"
    assert run_cli([str(folder), "-o", str(out), "--model", str(tiny_model), "--keep-size", *FAST]) == 0
    assert read(out / "rgba.png").shape == (30, 40, 3)
    assert read(out / "grey.png").shape == (33, 21, 3)
    assert read(out / "deep.png").shape == (18, 18, 3)


def test_bad_file_is_reported_and_batch_continues(tiny_model, faces, tmp_path, capsys):
    (faces / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert run_cli([str(faces), "-o", str(out), "--model", str(tiny_model), *FAST]) == 1
    assert len(list(out.glob("*.png"))) == 5
    err = capsys.readouterr().err
    assert "1 input(s) failed" in err and "broken.png" in err
    meta = json.loads((out / "restore.json").read_text())
    (run,) = meta["runs"].values()
    assert [f["input"] for f in run["failures"]] == [str(faces / "broken.png")]


def test_existing_outputs_need_overwrite(tiny_model, faces, tmp_path):
    out = tmp_path / "out"
    args = [str(faces / "face1.png"), "-o", str(out), "--model", str(tiny_model), *FAST]
    assert run_cli(args) == 0
    before = (out / "face1.png").read_bytes()
    with pytest.raises(CLIError, match="--overwrite"):
        run_cli(args)
    assert (out / "face1.png").read_bytes() == before
    assert run_cli([*args, "--overwrite", "--seed", "5"]) == 0
    meta = json.loads((out / "restore.json").read_text())
    assert len(meta["runs"]) == 2  # both runs recorded, image entry points at the latest


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing_dir", "-o", "{out}"], "does not exist"),
        (["{empty}", "-o", "{out}"], "contains no images"),
        (["{faces}", "-o", "{file}"], "not a directory"),
        (["{faces}", "-o", "{out}", "--model", "{nomodel}"], "neither an existing folder nor a hub id"),
        (["{faces}", "-o", "{out}", "--levels", "0,99", "--steps", "10"], "outside the grid"),
    ],
)
def test_bad_arguments_give_clear_errors(argv, message, tiny_model, faces, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    afile = tmp_path / "afile"
    afile.write_text("x")
    subs = dict(out=tmp_path / "out", empty=empty, file=afile, faces=faces, nomodel=tmp_path / "nope" / "x" / "y")
    argv = [a.format(**subs) for a in argv]
    if "--model" not in argv:
        argv += ["--model", str(tiny_model)]
    with pytest.raises(CLIError, match=message):
        run_cli(argv)


@pytest.mark.parametrize(
    "flag", [["--strength", "0"], ["--strength", "1.5"], ["--steps", "0"], ["--batch-size", "0"], ["--bogus"]]
)
def test_out_of_range_flags_exit_nonzero(flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(["x.png", "-o", str(tmp_path), *flag])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_default_model_missing_message(faces, tmp_path, monkeypatch):
    import odedit.models as models

    monkeypatch.setattr(models, "DEFAULT_MODEL_DIR", tmp_path / "no-weights")
    with pytest.raises(CLIError, match="--model"):
        run_cli([str(faces), "-o", str(tmp_path / "out"), "--quiet"])


def test_output_is_written_atomically(tiny_model, faces, tmp_path, monkeypatch):
    """If writing fails half-way, no partial output file appears under the final name."""

    def broken_save(self, fh, *a, **k):
        fh.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    out = tmp_path / "out"
    with pytest.raises(CLIError, match="cannot write .*face0.png: disk full"):
        run_cli([str(faces / "face0.png"), "-o", str(out), "--model", str(tiny_model), *FAST])
    assert not (out / "face0.png").exists()
    assert [p.name for p in out.iterdir() if p.suffix != ".json"] == []


def test_python_api_matches_cli_and_the_crop_gate(tiny_model, faces, tmp_path, capsys):
    from odedit import ODEdit
    from odedit.cli.restore import image_seed
    from odedit.imageio import fit_square, load_image_uint8, uint8_to_unit, unit_to_uint8
    from odedit.restorers import ODEditConfig

    out = tmp_path / "out"
    assert run_cli([str(faces / "face2.png"), "-o", str(out), "--model", str(tiny_model), *FAST]) == 0
    from odedit.devices import resolve_dtype_for

    dtype = resolve_dtype_for("auto", torch.device("cpu"))  # the CLI's default --dtype auto
    restorer = ODEdit.from_pretrained(str(tiny_model), config=ODEditConfig.from_preset("light", steps=6), dtype=dtype)
    image = fit_square(load_image_uint8(faces / "face2.png"), 16)
    gen = torch.Generator().manual_seed(image_seed(0, "face2.png"))
    api = unit_to_uint8(restorer.restore(uint8_to_unit(image[None]), generator=[gen]))[0]
    assert os.path.exists(out / "restore.json")
    # The crop's output keeps the input where the restoration's change is not the input's noise
    # (odedit.fidelity.keep_input, the whole crop as the face) ...
    from odedit.fidelity import keep_input

    gated = keep_input(api.astype(np.float32), image, 1.0, mask=np.ones(image.shape[:2], np.float32))
    assert np.array_equal(np.clip(np.rint(gated), 0, 255).astype(np.uint8), read(out / "face2.png"))
    # (the untrained tiny model's change is no denoising: most of it is refused)
    err = lambda a: np.abs(a.astype(float) - image).mean()  # noqa: E731
    assert err(read(out / "face2.png")) < 0.5 * err(api)
    # ... and without the gate and the colour match it is the restorer's output itself.
    raw = tmp_path / "raw"
    assert run_cli([str(faces / "face2.png"), "-o", str(raw), "--model", str(tiny_model), *FAST,
                    "--fidelity", "0", "--no-match-colour"]) == 0  # fmt: skip
    assert np.array_equal(api, read(raw / "face2.png"))
    entry = json.loads((raw / "restore.json").read_text())["images"]["face2.png"]
    assert (entry["fidelity"], entry["match_colour"], entry["restoration_kept"]) == (0.0, False, 1.0)
    kept = json.loads((out / "restore.json").read_text())["images"]["face2.png"]["restoration_kept"]
    assert 0.0 <= kept < 0.5
    from odedit.cli.restore import crop_line

    capsys.readouterr()
    loud = [a for a in FAST if a != "--quiet"]
    assert run_cli([str(faces / "face2.png"), "-o", str(tmp_path / "loud"), "--model", str(tiny_model), *loud,
                    "--keep-size"]) == 0  # fmt: skip
    stderr = capsys.readouterr().err
    entry = json.loads((tmp_path / "loud" / "restore.json").read_text())["images"]["face2.png"]
    assert f"face2.png: kept {int(100 * entry['restoration_kept'])}% of the restoration's change" in stderr
    assert (entry["upsample_factor"], entry["upsampler"], entry["output_size"]) == (2, "lanczos", [20, 24])

    assert crop_line("a.png", {"restoration_kept": 0.083}) == (
        "a.png: kept 8% of the restoration's change (the rest was not explained by the crop's noise; "
        "--low-band off keeps all of it)")


def test_concurrent_loads_leave_no_meta_device_patch(tiny_model):
    """diffusers' loader patches nn.Module globally while it runs; concurrent loads from
    threads must not leave that patch behind (models built later would be on 'meta')."""
    import threading

    from odedit.models import load_model

    errors = []

    def work():
        try:
            for _ in range(3):
                load_model(str(tiny_model))
        except Exception as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert next(build_unet("tiny", 16).parameters()).device.type == "cpu"


def test_choices_come_from_the_tables(tmp_path, capsys):
    """--method, --preset and --solver take the keys of METHODS, PRESETS and SOLVERS; building
    the parsers imports none of them (no torch)."""
    import subprocess
    import sys

    from odedit.restorers import METHODS, PRESETS
    from odedit.solvers import SOLVERS

    code = "import sys, odedit.cli as c; c.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    parser = argparse.ArgumentParser()
    restore_cli.add_parser(parser.add_subparsers())
    for flag, table in (("--method", METHODS), ("--preset", PRESETS), ("--solver", SOLVERS)):
        for name in table:
            assert getattr(parser.parse_args(["restore", "x.png", "-o", "y", flag, name]), flag[2:]) == name
        with pytest.raises(SystemExit):
            parser.parse_args(["restore", "x.png", "-o", "y", flag, "bogus"])
        assert ", ".join(repr(n) for n in table) in capsys.readouterr().err
    args = parser.parse_args(["restore", "x.png", "-o", "y"])
    assert restore_cli.build_config(args) == ODEditConfig.from_preset(DEFAULT_PRESET) == ODEditConfig.from_preset("fast")
    args = parser.parse_args(["restore", "x.png", "-o", "y", "--method", "sdedit", "--steps", "20"])
    assert restore_cli.build_config(args) == SDEditConfig(steps=20, strength=0.5, eta=1.0)


def test_help_opens_with_whole_photos_then_crops():
    parser = argparse.ArgumentParser()
    restore_cli.add_parser(parser.add_subparsers())
    text = parser._subparsers._group_actions[0].choices["restore"].format_help()
    description = text[text.index("Restore degraded"):]
    whole = description.index("Whole photos (--faces auto, the default)")
    crops = description.index("Aligned face crops")
    assert whole < crops < description.index("Methods:")
    assert description.index("paste") < crops  # detect, restore, paste back: before the crops


def test_a_long_run_says_how_long_and_what_is_faster(tiny_model, faces, tmp_path, monkeypatch, capsys):
    """No timing here: the estimate is replaced; what it was asked for and the note's words are checked."""
    asked = []

    def estimate(seconds_per_call, calls, faces, batch):
        asked.append((calls, faces, batch))
        return 2 * 3600 + 10 * 60

    monkeypatch.setattr(restore_cli, "estimate_seconds", estimate)
    assert run_cli([str(faces), "-o", str(tmp_path / "o"), "--model", str(tiny_model), *FAST, "--batch-size", "2"]) == 0
    err = capsys.readouterr().err
    assert asked == [(112, 5, 2)]  # once, on the first batch: 5 aligned faces, 2 at a time, 112 calls each
    note = "note: this run will take about 2 hours 10 minutes on this machine (5 images, 112 model calls per face"
    assert note in err
    assert "Faster: --preset fast (80 model calls per face instead of 112)" in err
    assert "--batch-size 8" in err and "--skip-existing resumes it" in err

    monkeypatch.setattr(restore_cli, "estimate_seconds", lambda *a: 9 * 60.0)  # under 10 minutes: nothing said
    assert run_cli([str(faces), "-o", str(tmp_path / "p"), "--model", str(tiny_model), *FAST]) == 0
    assert "will take" not in capsys.readouterr().err


def test_long_run_words():
    assert restore_cli.plain_duration(30) == "about 1 minute"
    assert restore_cli.plain_duration(25 * 60 + 10) == "about 25 minutes"
    assert restore_cli.plain_duration(3600 + 4 * 60) == "about 1 hour"
    assert restore_cli.plain_duration(2 * 3600 + 9 * 60) == "about 2 hours 10 minutes"
    assert restore_cli.plain_duration(3 * 86400) == "about 3 days"
    assert restore_cli.estimate_seconds(0.5, 80, 17, 8) == 0.5 * 80 * 3  # 3 batches of up to 8
    note = restore_cli.long_run_note(3000, photos=4, faces=6.4, calls=300, tips=[])
    assert note.startswith("note: this run will take about 50 minutes on this machine (4 images, about 6 faces, 300")
    assert "Faster" not in note
