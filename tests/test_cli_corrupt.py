"""Tests of ``odedit corrupt`` (odedit.cli.corrupt), run through a parser of our own."""

from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest
from PIL import Image

from odedit.cli import corrupt as cli
from odedit.cli.common import CLIError
from odedit.corruptions import CORRUPTIONS, MASKING, corrupt


def parse(argv):
    parser = argparse.ArgumentParser(prog="odedit")
    sub = parser.add_subparsers(dest="command")
    cli.add_parser(sub)
    return parser.parse_args(["corrupt", *map(str, argv)])


def run(argv) -> int:
    args = parse(argv)
    return args.run(args)


def picture(seed: int, h: int = 32, w: int = 32) -> np.ndarray:
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w) + 60], axis=-1)
    return np.clip(base + g.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def inputs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(picture(0)).save(d / "a.png")
    Image.fromarray(picture(1)).save(d / "b.jpg", quality=95)
    Image.fromarray(picture(2, 24, 40)).convert("RGBA").save(d / "c.png")
    (d / "notes.txt").write_text("not an image, ignored in a folder")
    return d


def read_manifest(outdir):
    with open(outdir / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def load(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_names_match_library():
    assert cli.CORRUPTION_NAMES == CORRUPTIONS
    assert cli.MASKING_NAMES == MASKING


def test_folder_in_folder_out_and_manifest(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert run([inputs, "-o", out, "--corruption", "fog", "--severity", "3", "--seed", "5"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png", "manifest.csv"]
    rows = read_manifest(out)
    assert list(rows[0]) == ["file", "corruption", "severity", "seed", "fraction"]
    assert [r["file"] for r in rows] == ["a.png", "b.png", "c.png"]
    assert all(r["corruption"] == "fog" and r["severity"] == "3" and r["fraction"] == "" for r in rows)
    # each output is reproduced alone from its manifest row
    from odedit.imageio import load_image_uint8

    for r in rows:
        src = next(p for p in inputs.iterdir() if p.stem == r["file"][:-4])
        clean = load_image_uint8(src)
        expect = corrupt(clean, r["corruption"], int(r["severity"]), np.random.default_rng(int(r["seed"])))
        got = load(out / r["file"])
        assert got.shape == clean.shape and np.array_equal(got, expect)
    assert "wrote 3 image(s)" in capsys.readouterr().out


def test_seeds_depend_on_name_not_position(inputs, tmp_path):
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    run([inputs, "-o", out1, "--corruption", "random", "--severity", "4", "--seed", "3"])
    run([inputs / "c.png", "-o", out2, "--corruption", "random", "--severity", "4", "--seed", "3"])
    r1 = {r["file"]: r for r in read_manifest(out1)}
    (r2,) = read_manifest(out2)
    assert r2 == r1["c.png"]
    assert np.array_equal(load(out1 / "c.png"), load(out2 / "c.png"))
    assert len({r["seed"] for r in r1.values()}) == 3
    assert all(r["corruption"] in CORRUPTIONS for r in r1.values())


def test_random_is_reproducible_and_seed_matters(inputs, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d, seed in ((a, 1), (b, 1), (c, 2)):
        run([inputs, "-o", d, "--corruption", "random", "--severity", "2", "--seed", seed])
    assert read_manifest(a) == read_manifest(b)
    assert all(np.array_equal(load(a / f), load(b / f)) for f in ("a.png", "b.png", "c.png"))
    assert [r["seed"] for r in read_manifest(a)] != [r["seed"] for r in read_manifest(c)]


def test_masking_fraction(inputs, tmp_path):
    out = tmp_path / "out"
    code = run([inputs / "a.png", "-o", out, "--corruption", "masking_vline_random_color", "--fraction", "0.25"])
    assert code == 0
    (row,) = read_manifest(out)
    assert row["severity"] == "" and float(row["fraction"]) == 0.25
    changed_cols = np.any(load(out / "a.png") != picture(0), axis=(0, 2)).sum()
    assert changed_cols == 8


def test_fraction_with_non_masking_is_refused(inputs, tmp_path):
    with pytest.raises(CLIError, match="masking"):
        run([inputs, "-o", tmp_path / "o", "--corruption", "snow", "--severity", "2", "--fraction", "0.2"])


def test_severity_required(inputs, tmp_path):
    with pytest.raises(CLIError, match="--severity"):
        run([inputs, "-o", tmp_path / "o", "--corruption", "snow"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--corruption", "blurry", "--severity", "2"], "valid names: random, gaussian_noise"),
        (["--corruption", "fog", "--severity", "0"], "out of range"),
        (["--corruption", "fog", "--severity", "6"], "out of range"),
        (["--corruption", "fog", "--severity", "two"], "not a valid int"),
        (["--corruption", "masking_random_color", "--fraction", "1.5"], "out of range"),
    ],
)
def test_bad_values_are_argparse_errors(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        parse([tmp_path, "-o", tmp_path / "o", *argv])
    assert exc.value.code != 0
    assert message in capsys.readouterr().err


def test_bad_input_file_skipped_and_reported(inputs, tmp_path, capsys):
    (inputs / "broken.png").write_bytes(b"this is not a png")
    out = tmp_path / "out"
    code = run([inputs, tmp_path / "missing.jpg", "-o", out, "--corruption", "contrast", "--severity", "1"])
    assert code == 1
    err = capsys.readouterr().err
    assert "2 input(s) skipped" in err and "broken.png" in err and "missing.jpg" in err
    assert [r["file"] for r in read_manifest(out)] == ["a.png", "b.png", "c.png"]
    assert not (out / "broken.png").exists()


def test_no_inputs_at_all(tmp_path):
    with pytest.raises(CLIError, match="no input images"):
        run([tmp_path / "nothing-here", "-o", tmp_path / "o", "--corruption", "fog", "--severity", "1"])


def test_no_overwrite_without_flag(inputs, tmp_path):
    out = tmp_path / "out"
    run([inputs, "-o", out, "--corruption", "contrast", "--severity", "1"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(CLIError, match="--overwrite"):
        run([inputs, "-o", out, "--corruption", "contrast", "--severity", "5"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert run([inputs, "-o", out, "--corruption", "contrast", "--severity", "5", "--overwrite"]) == 0
    assert all(r["severity"] == "5" for r in read_manifest(out))
    assert (out / "a.png").read_bytes() != before["a.png"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temp files left behind"


def test_manifest_merges_with_earlier_runs(inputs, tmp_path):
    out = tmp_path / "out"
    run([inputs / "a.png", "-o", out, "--corruption", "fog", "--severity", "1"])
    run([inputs / "b.jpg", "-o", out, "--corruption", "snow", "--severity", "2"])
    rows = read_manifest(out)
    assert [(r["file"], r["corruption"]) for r in rows] == [("a.png", "fog"), ("b.png", "snow")]


def test_output_name_clash_refused(inputs, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(picture(5)).save(other / "a.png")
    with pytest.raises(CLIError, match="'a.png'"):
        run([inputs, other, "-o", tmp_path / "out", "--corruption", "fog", "--severity", "1"])


def test_refuses_to_replace_its_input(inputs):
    with pytest.raises(CLIError, match="own input"):
        run([inputs / "a.png", "-o", inputs, "--corruption", "fog", "--severity", "1", "--overwrite"])


def test_module_imports_only_stdlib():
    import subprocess
    import sys

    code = "import sys, odedit.cli.corrupt; print(sorted(m for m in ('numpy', 'PIL', 'scipy', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_through_the_odedit_dispatcher(inputs, tmp_path, capsys):
    try:
        from odedit.cli import main
    except ImportError as err:  # another subcommand module not written yet
        pytest.skip(f"odedit.cli not importable: {err}")
    out = tmp_path / "out"
    assert main(["corrupt", str(inputs), "-o", str(out), "--corruption", "pixelate", "--severity", "2"]) == 0
    assert (out / "a.png").exists()
    assert main(["corrupt", str(inputs), "-o", str(out), "--corruption", "pixelate", "--severity", "2"]) == 2
    assert "odedit corrupt: error:" in capsys.readouterr().err


def test_size_resizes_before_corrupting(tmp_path):
    """--size N brings every input to NxN first, so corruptions act at the model's resolution."""
    import numpy as np
    from PIL import Image

    from odedit.cli import main

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((50, 30, 3), 128, np.uint8)).save(src / "a.png")
    out = tmp_path / "out"
    assert main(["corrupt", str(src), "-o", str(out), "--corruption", "contrast", "--severity", "3",
                 "--size", "16"]) == 0
    assert np.asarray(Image.open(out / "a.png")).shape == (16, 16, 3)
