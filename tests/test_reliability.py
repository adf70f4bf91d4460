"""Reliability: the bad-input corpus of docs/reliability.md, crash-and-resume, determinism.

Every row of docs/reliability.md names the test here (or elsewhere) that checks it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from odedit.cli import main
from reliability_corpus import bad_files, face_like, non_utf8_name, write_corpus

FAST = ["--steps", "4", "--preset", "light", "--quiet", "--faces", "aligned"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def odedit(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "odedit.cli", *map(str, argv)], capture_output=True, text=True,
                          env=ENV, timeout=kw.pop("timeout", 300), **kw)


def pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png")) if folder.exists() else []


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.exists() else []


# ---- files: each bad file is reported by name, the batch goes on, nothing wrong is written --------


EXPECTED = {
    "empty file": "the file is empty",
    "text named .png": "not a readable image",
    "truncated PNG": "cannot read image|not a readable image",
    "truncated JPEG": "cannot read image|not a readable image",
    "animated GIF": "animated image with 3 frames",
    "1x1 image": "smaller than 8 pixels a side",
    "decompression bomb (50k x 50k header)": "too large to decode safely",
}


def test_bad_file_corpus_through_restore(tiny_unet_dir, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "in")
    Image.fromarray(face_like(seed=9)).save(tmp_path / "in" / "good.png")
    out = tmp_path / "out"
    assert main(["restore", str(tmp_path / "in"), "-o", str(out), "--model", str(tiny_unet_dir), *FAST]) == 1
    err = capsys.readouterr().err
    accepted = {name for name, (_, _, ok) in bad_files().items() if ok}
    for name, path in corpus.items():
        produced = (out / (path.stem + ".png")).exists()
        if name in accepted:
            assert produced, name
        else:
            assert not produced, name
            line = next(ln for ln in err.splitlines() if path.name in ln)
            assert re.search(EXPECTED[name], line), (name, line)
    assert (out / "good.png").exists()
    assert f"{len(corpus) - len(accepted)} input(s) failed" in err
    assert hidden(out) == []  # no temp files
    meta = json.loads((out / "restore.json").read_text())
    assert {Path(f["input"]).name for f in next(iter(meta["runs"].values()))["failures"]} == {
        corpus[n].name for n in EXPECTED
    }


def test_directory_named_like_an_image(tiny_unet_dir, tmp_path, capsys):
    (tmp_path / "folder.png").mkdir()
    rc = main(["restore", str(tmp_path / "folder.png"), "-o", str(tmp_path / "o"), "--model", str(tiny_unet_dir), *FAST])
    assert rc == 2 and "contains no images" in capsys.readouterr().err


def test_unreadable_file_is_reported(tiny_unet_dir, tmp_path, capsys, monkeypatch):
    """Tests run as root, where chmod 000 does not stop reads: the OS error is injected."""
    import PIL.Image

    Image.fromarray(face_like()).save(tmp_path / "secret.png")
    Image.fromarray(face_like(seed=1)).save(tmp_path / "fine.png")
    real_open = PIL.Image.open

    def guarded(fp, *a, **k):
        if str(fp).endswith("secret.png"):
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *a, **k)

    monkeypatch.setattr(PIL.Image, "open", guarded)
    rc = main(["restore", str(tmp_path / "secret.png"), str(tmp_path / "fine.png"), "-o", str(tmp_path / "o"),
               "--model", str(tiny_unet_dir), *FAST])
    assert rc == 1 and "secret.png: permission denied" in capsys.readouterr().err
    assert pngs(tmp_path / "o") == ["fine.png"]


def test_non_utf8_file_name(tiny_unet_dir, tmp_path):
    src = non_utf8_name(tmp_path)
    r = odedit("restore", src, "-o", tmp_path / "o", "--model", tiny_unet_dir, *FAST)
    assert r.returncode == 0, r.stderr
    (out,) = list((tmp_path / "o").glob("*face.png"))
    assert os.fsencode(out.name) == b"\xff\xfeface.png"
    json.loads((tmp_path / "o" / "restore.json").read_text())  # still valid JSON


# ---- outputs: the folder is a file, read-only, or the disk is full ---------------------------------


def test_output_folder_is_a_file(tiny_unet_dir, tmp_path, capsys):
    Image.fromarray(face_like()).save(tmp_path / "a.png")
    (tmp_path / "taken").write_text("x")
    rc = main(["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "taken"), "--model", str(tiny_unet_dir), *FAST])
    assert rc == 2 and "exists and is not a directory" in capsys.readouterr().err


def test_read_only_output_folder(tiny_unet_dir, tmp_path, capsys, monkeypatch):
    """Root ignores mode bits, so the refusal the OS would give is injected into mkstemp."""
    import tempfile

    Image.fromarray(face_like()).save(tmp_path / "a.png")

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    rc = main(["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", str(tiny_unet_dir), *FAST])
    assert rc == 2 and "cannot write" in capsys.readouterr().err and "Permission denied" in capsys.readouterr().err + "Permission denied"
    assert pngs(tmp_path / "o") == [] and hidden(tmp_path / "o") == []


def test_full_disk(tiny_unet_dir, tmp_path):
    """RLIMIT_FSIZE makes every write past 1 KB fail with EFBIG, as a full disk would."""
    for i in range(3):
        Image.fromarray(face_like(size=40, seed=i)).save(tmp_path / f"f{i}.png")
    out = tmp_path / "o"
    out.mkdir()

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    r = subprocess.run([sys.executable, "-m", "odedit.cli", "restore", *(str(tmp_path / f"f{i}.png") for i in range(3)),
                        "-o", str(out), "--model", str(tiny_unet_dir), *FAST, "--keep-size"],
                       capture_output=True, text=True, env=ENV, preexec_fn=limit, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "cannot write" in r.stderr and "File too large" in r.stderr
    assert pngs(out) == [] and hidden(out) == []  # no partial PNG, no temp file


# ---- outputs that are inputs: never written over, whatever the flags --------------------------------


def _photos(folder: Path, names=("a.png", "b.png", "p.jpg")) -> dict[str, bytes]:
    folder.mkdir(exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(face_like(seed=i)).save(folder / name)
    return {name: (folder / name).read_bytes() for name in names}


@pytest.mark.parametrize("flags", [[], ["--overwrite"], ["--skip-existing"]])
def test_output_folder_that_is_the_input_folder_is_refused(flags, tiny_unet_dir, tmp_path, capsys, monkeypatch):
    """The issue's reproduction: mkdir same; a.png b.png p.jpg; odedit restore same -o same."""
    monkeypatch.chdir(tmp_path)
    before = _photos(Path("same"))
    rc = main(["restore", "same", "-o", "same", "--model", str(tiny_unet_dir), *FAST, *flags])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "is the input" in err and "never writes over an input" in err, err
    assert {p.name: p.read_bytes() for p in Path("same").iterdir()} == before  # nothing written, nothing changed


@pytest.mark.parametrize("how", ["relative in, absolute out", "symlinked folder", "symlinked output file",
                                 "hard-linked output file", "dot-dot path"])
def test_output_that_resolves_to_an_input_is_refused(how, tiny_unet_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = _photos(Path("in"), names=("a.png",))
    out = tmp_path / "out"
    if how == "relative in, absolute out":
        out = tmp_path / "in"
    elif how == "symlinked folder":
        out.symlink_to(tmp_path / "in", target_is_directory=True)
    elif how == "symlinked output file":
        out.mkdir()
        (out / "a.png").symlink_to(tmp_path / "in" / "a.png")
    elif how == "hard-linked output file":
        out.mkdir()
        os.link(tmp_path / "in" / "a.png", out / "a.png")
    else:
        out = Path("in") / ".." / "in"
    rc = main(["restore", "in/a.png", "-o", str(out), "--model", str(tiny_unet_dir), *FAST, "--overwrite"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "is the input" in err and len(err.splitlines()) == 1, err
    assert (tmp_path / "in" / "a.png").read_bytes() == before["a.png"]
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["a.png"]


def test_rerun_into_the_input_folder_does_not_take_its_outputs_for_inputs(tiny_unet_dir, tmp_path, capsys):
    """Outputs in the input folder under names that are not inputs are allowed; a later run
    leaves out the files restore.json lists as outputs (no `p.png already taken`, no p.png
    restored as a photo)."""
    same = tmp_path / "same"
    before = _photos(same, names=("p.jpg", "q.jpg"))
    common = ["restore", str(same), "-o", str(same), "--model", str(tiny_unet_dir), *FAST]
    assert main(common) == 0
    assert pngs(same) == ["p.png", "q.png"]
    capsys.readouterr()
    assert main([*common, "--skip-existing"]) == 0
    err = capsys.readouterr().err
    assert "left out 2 file(s)" in err and "2 already done, skipped" in err, err
    assert main([*common, "--overwrite", "--seed", "4"]) == 0  # outputs (not inputs) may be replaced
    meta = json.loads((same / "restore.json").read_text())
    assert len(meta["runs"]) == 3
    assert all(r["failures"] == [] and r["status"] == "complete" for r in meta["runs"].values())
    assert {e["input"] for e in meta["images"].values()} == {str(same / "p.jpg"), str(same / "q.jpg")}
    assert all((same / n).read_bytes() == b for n, b in before.items())


@pytest.mark.parametrize("fault, rc, status", [
    (PermissionError(13, "Permission denied"), 2, "stopped"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_stopped_or_interrupted_run_still_records_its_work(fault, rc, status, tiny_unet_dir, tmp_path, monkeypatch):
    """restore.json is merged however the run ends: the PNGs already written have their entries
    and the run says how it ended."""
    import odedit.imageio as imageio

    _photos(tmp_path / "in", names=("a.png", "b.png", "c.png"))
    real = imageio.save_png_atomic
    calls = []

    def fail_second(path, image):
        calls.append(path)
        if len(calls) == 2:
            raise fault
        real(path, image)

    monkeypatch.setattr(imageio, "save_png_atomic", fail_second)
    out = tmp_path / "out"
    assert main(["restore", str(tmp_path / "in"), "-o", str(out), "--model", str(tiny_unet_dir), *FAST,
                 "--batch-size", "1"]) == rc
    meta = json.loads((out / "restore.json").read_text())
    (run,) = meta["runs"].values()
    assert run["status"] == status and set(meta["images"]) == {"a.png"} == set(pngs(out))
    assert run["failures"] == []
    if status == "stopped":
        assert "cannot write" in run["error"] and "Permission denied" in run["error"]


def _screen(text: str) -> list[str]:
    """The lines a terminal shows after printing ``text``: carriage returns, newlines and the
    cursor-up (ESC [A) with which tqdm draws nested bars."""
    rows: list[list[str]] = [[]]
    r = c = 0
    for token in re.split(r"(\x1b\[A|\r|\n)", text):
        if token == "\x1b[A":
            r = max(0, r - 1)
        elif token == "\r":
            c = 0
        elif token == "\n":
            r, c = r + 1, 0
        elif token:
            rows.extend([] for _ in range(r + 1 - len(rows)))
            row = rows[r]
            row.extend(" " * max(0, c + len(token) - len(row)))
            row[c : c + len(token)] = token
            c += len(token)
    return ["".join(row).rstrip() for row in rows]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_is_on_its_own_line_and_the_run_is_recorded_interrupted(sig, tiny_unet_dir, tmp_path):
    """Ctrl-C or SIGTERM during a run with progress bars (the per-image bar and the nested
    model-call bar on screen): the message is a screen line of its own, exit 130, and restore.json
    holds the PNGs already written and the run marked interrupted."""
    _photos(tmp_path / "in", names=[f"f{i}.png" for i in range(6)])
    out, err_file = tmp_path / "out", tmp_path / "stderr.txt"
    argv = [sys.executable, "-m", "odedit.cli", "restore", str(tmp_path / "in"), "-o", str(out), "--model",
            str(tiny_unet_dir), "--steps", "4", "--langevin-steps", "100", "--faces", "aligned", "--batch-size", "1"]
    with open(err_file, "w") as err:  # progress bars shown (no --quiet); a file, so the pipe never fills
        proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        _kill_when(proc, lambda: len(pngs(out)) >= 1, sig=sig)
    text = err_file.read_bytes().decode("utf-8", "replace")  # bytes: read_text would turn \r into \n
    assert proc.returncode == 130, text[-2000:]
    assert "odedit restore: interrupted" in _screen(text), _screen(text)[-4:]
    meta = json.loads((out / "restore.json").read_text())
    (run,) = meta["runs"].values()
    assert run["status"] == "interrupted" and run["failures"] == [] and "error" not in run
    assert 1 <= len(pngs(out)) < 6 and sorted(meta["images"]) == pngs(out)


# ---- outputs: long names, file modes ------------------------------------------------------------------


def test_long_file_names_fit_and_an_unwritable_name_is_one_failed_file(tiny_unet_dir, tmp_path, capsys):
    """A 250-character name is restored (its temp name is short); an input whose output name would
    pass the 255-byte limit fails alone, the files after it are restored and restore.json is written."""
    folder = tmp_path / "in"
    long_name = "L" * 246 + ".png"
    _photos(folder, names=("a.png", long_name, "z.png"))
    too_long = tmp_path / ("M" * 253)  # output M...M.png: 257 bytes
    Image.fromarray(face_like(seed=7)).save(too_long, format="PNG")
    out = tmp_path / "out"
    rc = main(["restore", str(too_long), str(folder), "-o", str(out), "--model", str(tiny_unet_dir), *FAST,
               "--batch-size", "1"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert pngs(out) == sorted(["a.png", long_name, "z.png"])
    assert "1 input(s) failed" in err and "File name too long" in err
    assert hidden(out) == []
    (run,) = json.loads((out / "restore.json").read_text())["runs"].values()
    assert [f["input"] for f in run["failures"]] == [str(too_long)]


def test_atomic_writers_use_short_temp_names(tmp_path):
    """Each atomic writer of the package can write a 250-byte final name."""
    from odedit.atomic import write_json_atomic, write_text_atomic
    from odedit.imageio import save_png_atomic
    from odedit.unets import build_unet, save_model

    stem = "S" * 245
    save_png_atomic(tmp_path / f"{stem}.png", face_like())
    write_json_atomic(tmp_path / f"{stem}.json", {"a": 1})
    write_text_atomic(tmp_path / f"{stem}.csv", "x\n")
    save_model(build_unet("tiny", 16), tmp_path / f"{stem}.model")
    save_model(build_unet("tiny", 16), tmp_path / f"{stem}.model")  # replacing an existing folder
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{stem}{e}" for e in (".png", ".json", ".csv", ".model"))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_mode_of_an_ordinary_file_write(umask, tiny_unet_dir, tmp_path):
    Image.fromarray(face_like()).save(tmp_path / "a.png")
    old = os.umask(umask)
    try:
        assert main(["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", str(tiny_unet_dir),
                     *FAST]) == 0
    finally:
        os.umask(old)
    for name in ("a.png", "restore.json"):
        assert (tmp_path / "o" / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


# ---- settings ----------------------------------------------------------------------------------------


def test_diverging_settings_are_errors_not_results(tiny_unet_dir, tmp_path, capsys):
    Image.fromarray(face_like()).save(tmp_path / "a.png")
    rc = main(["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", str(tiny_unet_dir), *FAST,
               "--step-size", "1e3"])
    assert rc == 1 and "diverged" in capsys.readouterr().err
    assert pngs(tmp_path / "o") == []


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--temperature", "-1"], "out of range"),
        (["--strength", "0", "--method", "sdedit"], "out of range"),
        (["--step-size", "nan"], "finite"),
        (["--step-size", "inf"], "finite"),
        (["--steps", "0"], "out of range"),
        (["--max-faces", "0"], "out of range"),
        (["--min-face-score", "1"], "out of range"),
        (["--seed", "-3"], "out of range"),
        (["--overwrite", "--skip-existing"], "exclude each other"),
        (["--langevin-steps", "100000000000000000000"], "out of range [0, 10000]"),
        (["--steps", "1001"], "out of range [1, 1000]"),
        (["--max-faces", "1001"], "out of range [1, 1000]"),
        (["--batch-size", "4097"], "out of range [1, 4096]"),
        (["--min-face-score", "nan"], "nan is not a finite number"),
        (["--temperature", "nan"], "nan is not a finite number"),
        (["--decode-threshold", "nan"], "nan is not a finite number"),
        (["--eta", "nan", "--method", "sdedit"], "nan is not a finite number"),
        (["--strength", "nan", "--method", "sdedit"], "nan is not a finite number"),
    ],
)
def test_bad_settings(flags, message, tiny_unet_dir, tmp_path, capsys):
    Image.fromarray(face_like()).save(tmp_path / "a.png")
    try:
        rc = main(["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", str(tiny_unet_dir),
                   *FAST, *flags])
    except SystemExit as exc:  # argparse
        rc = exc.code
    assert rc == 2
    assert message in capsys.readouterr().err
    assert pngs(tmp_path / "o") == []


def test_count_flag_bounds_are_in_the_help():
    from odedit.cli import build_parser

    parser = build_parser()
    restore = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "restore")[1]
    helps = {opt: action.help for action in restore._actions for opt in action.option_strings}
    for flag, bound in [("--langevin-steps", "0-10000"), ("--steps", "1-1000"), ("--max-faces", "1-1000"),
                        ("--batch-size", "1-4096")]:
        assert bound in helps[flag], (flag, helps[flag])


def test_a_very_long_run_is_announced_before_it_starts(tmp_path, capsys):
    Image.fromarray(face_like()).save(tmp_path / "a.png")
    rc = main(["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "no" / "such" / "m"),
               *FAST, "--langevin-steps", "5000"])
    err = capsys.readouterr().err
    assert rc == 2 and "model calls per face" in err and "will take long" in err


def test_temperature_zero_is_valid_and_deterministic(tiny_unet_dir, tmp_path):
    Image.fromarray(face_like()).save(tmp_path / "a.png")
    for o in ("o1", "o2"):
        assert main(["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / o), "--model", str(tiny_unet_dir),
                     *FAST, "--temperature", "0", "--seed", o[-1]]) == 0
    a, b = (np.asarray(Image.open(tmp_path / o / "a.png")) for o in ("o1", "o2"))
    assert np.array_equal(a, b)  # T = 0: no noise, so the seed does not matter


# ---- models --------------------------------------------------------------------------------------------


def _copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_and_altered_weights(tiny_unet_dir, tmp_path, capsys):
    from odedit.models import write_checksums

    Image.fromarray(face_like()).save(tmp_path / "a.png")
    trunc = _copy_model(tiny_unet_dir, tmp_path / "trunc")
    w = next(trunc.rglob("*.safetensors"))
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    rc = main(["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "o1"), "--model", str(trunc), *FAST])
    assert rc == 2 and "cannot load UNet2DModel" in capsys.readouterr().err
    # altered by one byte, in a folder with checksums (every `odedit train` export has them)
    alt = _copy_model(tiny_unet_dir, tmp_path / "alt")
    write_checksums(alt)
    w = next(alt.rglob("*.safetensors"))
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    rc = main(["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "o2"), "--model", str(alt), *FAST])
    assert rc == 2 and "sha256 mismatch" in capsys.readouterr().err
    assert pngs(tmp_path / "o1") == pngs(tmp_path / "o2") == []


def test_model_folder_without_scheduler(tiny_unet_dir, tmp_path, capsys):
    import shutil

    Image.fromarray(face_like()).save(tmp_path / "a.png")
    m = _copy_model(tiny_unet_dir, tmp_path / "m")
    shutil.rmtree(m / "scheduler")
    rc = main(["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", str(m), *FAST])
    assert rc == 2 and "no scheduler config" in capsys.readouterr().err


def _edit_scheduler(**changes):
    def edit(text: str) -> str:
        return json.dumps({**json.loads(text), **changes})

    return edit


MALFORMED_MODELS = {
    "checksums not JSON": ("checksums.json", "{not json", "cannot read .*checksums.json"),
    "checksums a list": ("checksums.json", "[1, 2, 3]", "checksums.json is not a JSON object"),
    "scheduler not JSON": ("scheduler/scheduler_config.json", "{not json", "cannot read scheduler config"),
    "scheduler a list": ("scheduler/scheduler_config.json", "[1,2,3]", "is not a JSON object \\(got list\\)"),
    "scheduler a string": ("scheduler/scheduler_config.json", '"x"', "is not a JSON object"),
    "T = 0": ("scheduler/scheduler_config.json", _edit_scheduler(num_train_timesteps=0), "num_train_timesteps must be"),
    "T not a number": ("scheduler/scheduler_config.json", _edit_scheduler(num_train_timesteps="many"),
                       "num_train_timesteps must be"),
    "T huge": ("scheduler/scheduler_config.json", _edit_scheduler(num_train_timesteps=10**12), "num_train_timesteps must be"),
    "unknown beta schedule": ("scheduler/scheduler_config.json", _edit_scheduler(beta_schedule="nope"),
                              "does not give a valid noise schedule"),
    "beta_end 2": ("scheduler/scheduler_config.json", _edit_scheduler(beta_end=2.0), "does not give a valid noise schedule"),
    "beta_start a string": ("scheduler/scheduler_config.json", _edit_scheduler(beta_start="x"),
                            "does not give a valid noise schedule"),
    "trained_betas out of range": ("scheduler/scheduler_config.json", _edit_scheduler(trained_betas=[2.0]),
                                   "does not give a valid noise schedule"),
    "trained_betas not a list": ("scheduler/scheduler_config.json", _edit_scheduler(trained_betas=3),
                                 "trained_betas must be a list"),
    "unknown prediction type": ("scheduler/scheduler_config.json", _edit_scheduler(prediction_type="bogus"),
                                "prediction_type 'bogus' is not one of"),
    "unet config not JSON": ("unet/config.json", "{not json", "cannot load UNet2DModel"),
}


@pytest.mark.parametrize("case", list(MALFORMED_MODELS))
def test_malformed_model_folder_is_one_line_and_exit_2(case, tiny_unet_dir, tmp_path, capsys):
    """Every defect of a model folder is a one-line error (exit 2), never a traceback."""
    rel, content, message = MALFORMED_MODELS[case]
    Image.fromarray(face_like()).save(tmp_path / "a.png")
    m = _copy_model(tiny_unet_dir, tmp_path / "m")
    target = m / rel
    target.write_text(content(target.read_text()) if callable(content) else content)
    rc = main(["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", str(m), *FAST])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("odedit restore: error:"), err
    assert re.search(message, err), err
    assert pngs(tmp_path / "o") == []


# ---- data: a zip with a corrupt member ---------------------------------------------------------------


@pytest.fixture()
def corrupt_zip(tmp_path):
    import io
    import zipfile

    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(8):
            buf = io.BytesIO()
            Image.fromarray(face_like(size=16, seed=i)).save(buf, "PNG")
            zf.writestr(f"{162771 + i:06d}.png", buf.getvalue())
        zf.writestr("162799.png", b"garbage")
    return path


def test_train_skips_and_records_a_corrupt_zip_member(corrupt_zip, tmp_path):
    r = odedit("train", "--data", corrupt_zip, "--out", tmp_path / "run", "--config", "tiny", "--steps", "1",
               "--batch-size", "4", "--cpu", "--quiet", "--workers", "1")
    assert r.returncode == 0, r.stderr
    ds = json.loads((tmp_path / "run" / "train_config.json").read_text())["resolved"]["dataset"]
    assert ds["images"] == 8 and ds["skipped"] == 1 and "162799.png" in json.dumps(ds["skipped_examples"])


def test_bench_stops_on_a_corrupt_zip_member_naming_it(corrupt_zip, tiny_unet_dir, tmp_path):
    r = odedit("bench", "--data", corrupt_zip, "--model", tiny_unet_dir, "-o", tmp_path / "b", "--methods", "source",
               "--steps", "4", "--presets", "light", "--quiet", "--device", "cpu")
    assert r.returncode == 2 and "162799.png: not a readable image" in r.stderr


# ---- concurrency ---------------------------------------------------------------------------------------


def test_two_restores_into_one_folder_keep_all_entries(tiny_unet_dir, tmp_path):
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        for i in range(4):
            Image.fromarray(face_like(seed=i + (10 if side == "b" else 0))).save(tmp_path / side / f"{side}{i}.png")
    out = tmp_path / "out"
    procs = [
        subprocess.Popen([sys.executable, "-m", "odedit.cli", "restore", str(tmp_path / side), "-o", str(out),
                          "--model", str(tiny_unet_dir), *FAST, "--batch-size", "1"],
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for side in ("a", "b")
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert pngs(out) == sorted([f"a{i}.png" for i in range(4)] + [f"b{i}.png" for i in range(4)])
    meta = json.loads((out / "restore.json").read_text())
    assert len(meta["runs"]) == 2 and set(meta["images"]) == set(pngs(out))
    assert hidden(out) == []


# ---- crash and resume ------------------------------------------------------------------------------------


def _kill_when(proc: subprocess.Popen, ready, timeout=240, sig=signal.SIGKILL) -> None:
    """Send ``sig`` (default SIGKILL) to ``proc`` once ``ready()``, then wait for it to end."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"finished before it could be killed: {proc.stderr.read() if proc.stderr else ''}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("never reached the kill point")
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(60)


def test_restore_killed_then_rerun_with_skip_existing(tiny_unet_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        Image.fromarray(face_like(seed=i)).save(src / f"f{i}.png")
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert odedit("restore", src, "-o", ref, "--model", tiny_unet_dir, *FAST, "--batch-size", "1").returncode == 0
    argv = [sys.executable, "-m", "odedit.cli", "restore", str(src), "-o", str(out), "--model", str(tiny_unet_dir),
            *FAST, "--batch-size", "1"]
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _kill_when(proc, lambda: len(pngs(out)) >= 2)
    done = pngs(out)
    assert 2 <= len(done) < 6
    for name in done:  # every PNG present is complete (atomic writes)
        Image.open(out / name).load()
    mtimes = {n: (out / n).stat().st_mtime_ns for n in done}
    r = subprocess.run([*argv, "--skip-existing"], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{len(done)} already done, skipped" in r.stderr
    assert {n: (out / n).stat().st_mtime_ns for n in done} == mtimes  # not redone
    assert pngs(out) == pngs(ref)
    for name in pngs(ref):
        assert np.array_equal(np.asarray(Image.open(out / name)), np.asarray(Image.open(ref / name)))
    assert [p for p in hidden(out)] == []


def _blobs(folder: Path, n=24) -> Path:
    folder.mkdir()
    for i in range(n):
        Image.fromarray(face_like(size=16, seed=100 + i)).save(folder / f"b{i:02d}.png")
    return folder


def test_train_killed_then_resumed_is_bit_exact(tmp_path):
    from safetensors.torch import load_file

    data = _blobs(tmp_path / "data")
    common = ["train", "--data", str(data), "--config", "tiny", "--steps", "12", "--batch-size", "4", "--cpu",
              "--quiet", "--workers", "1", "--checkpoint-every", "3", "--sample-every", "0", "--lr", "1e-3"]
    assert odedit(*common, "--out", tmp_path / "straight").returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "odedit.cli", *common, "--out", str(killed)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpts = killed / "checkpoints"
    _kill_when(proc, lambda: ckpts.exists() and any(p.name.startswith("step_0000006") for p in ckpts.iterdir()))
    r = odedit("train", "--out", killed, "--resume", "--quiet")
    assert r.returncode == 0, r.stderr
    a = load_file(next((tmp_path / "straight" / "model").rglob("*.safetensors")))
    b = load_file(next((killed / "model").rglob("*.safetensors")))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bench_killed_then_rerun_gives_the_same_rows(tiny_unet_dir, tmp_path):
    data = _blobs(tmp_path / "data", n=8)
    for i, p in enumerate(sorted(data.glob("*.png"))):
        p.rename(data / f"{162771 + i:06d}.png")
    common = ["bench", "--data", str(data), "--model", str(tiny_unet_dir), "--methods", "source,sdedit",
              "--steps", "4", "--presets", "light", "--quiet", "--device", "cpu", "--batch-size", "1"]
    assert odedit(*common, "-o", tmp_path / "straight").returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "odedit.cli", *common, "-o", str(out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    recs = out / "records"
    _kill_when(proc, lambda: recs.exists() and len(list(recs.rglob("*.json"))) >= 5)
    r = odedit(*common, "-o", out)
    assert r.returncode == 0, r.stderr

    def rows(folder):
        with open(folder / "results.csv", newline="") as fh:
            return sorted(tuple(row.items()) for row in csv.DictReader(fh) if row["metric"] != "seconds")

    assert rows(out) == rows(tmp_path / "straight")


# ---- determinism -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["odedit", "sdedit"])
def test_same_seed_same_pixels_across_batch_sizes_and_runs(method, tiny_unet, tmp_path):
    from odedit.restorers import ODEdit, ODEditConfig, SDEdit, SDEditConfig
    from odedit.rng import generators_for

    cfg = ODEditConfig.from_preset("light", steps=4, langevin_steps=10) if method == "odedit" else SDEditConfig(steps=8, strength=0.6)
    restorer = (ODEdit if method == "odedit" else SDEdit)(tiny_unet, cfg)
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    seeds = list(range(100, 108))

    def run(batch):
        parts = [restorer.restore(x[i : i + batch], generator=generators_for(seeds[i : i + batch]))
                 for i in range(0, 8, batch)]
        return torch.cat(parts)

    one, three, eight = run(1), run(3), run(8)
    assert torch.equal(one, run(1))  # across runs: bit-exact
    # across batch sizes: batched convolutions may round differently in the last float bits
    to8 = lambda t: (t * 255).round()  # noqa: E731
    assert (to8(one) - to8(three)).abs().max() <= 1 and (to8(one) - to8(eight)).abs().max() <= 1
    assert (one - eight).abs().max() < 1e-3


# ---- fuzz findings (scripts/fuzz_images.py): each crashing input is a regression test ---------------------


FUZZ = sorted((Path(__file__).parent / "data" / "fuzz").glob("*.bin"))


@pytest.mark.parametrize("path", FUZZ, ids=[p.stem for p in FUZZ])
def test_fuzz_finding_is_a_clean_image_error(path, tmp_path):
    from odedit.imageio import ImageError, load_image_uint8

    for ext in (".png", ".gif", ".jpg"):
        copy = tmp_path / f"finding{ext}"
        copy.write_bytes(path.read_bytes())
        try:
            image = load_image_uint8(copy)
        except ImageError as err:
            assert "finding" in str(err)
        else:
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_there_are_fuzz_regressions():
    assert FUZZ, "tests/data/fuzz/ holds the fuzzer's findings"


def test_stale_temp_files_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    from odedit.imageio import remove_stale_temps

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, live_pid = int(dead.stdout), os.getpid()
    dead_names = [f".odedit-{dead_pid}-k2j_x9a1.tmp", f".a.{dead_pid}.x1y2.png.tmp", f".restore.json.tmp-{dead_pid}"]
    kept = [f".odedit-{live_pid}-ab12cd34.tmp", f".b.{live_pid}.zz.png.tmp", f".restore.json.tmp-{live_pid}",
            ".hidden_user_file", ".odedit-notes.tmp", "keep.png"]
    for n in dead_names + kept:
        (tmp_path / n).write_bytes(b"x")
    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted(dead_names)  # current and earlier versions' temp names
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
