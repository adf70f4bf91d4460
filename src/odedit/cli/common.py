"""Helpers shared by the subcommands: errors, argument types, device choice."""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from odedit.atomic import write_json_atomic  # noqa: F401 (the subcommands' JSON writer, re-exported)


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


# Upper bounds of the count flags: far above any useful setting (the presets use 100 steps and
# at most 75 Langevin updates a level), low enough that a typo cannot start a run of years.
MAX_STEPS = 1000  # DDIM steps: one per training timestep of the usual T = 1000
MAX_LANGEVIN_STEPS = 10_000  # per level
MAX_FACES = 1000  # per photo
MAX_BATCH_SIZE = 4096
LONG_RUN_CALLS = 10_000  # model calls per face above which a run is announced (the default preset: 80; light: 300)
LONG_RUN_SECONDS = 10 * 60  # an estimated restoring time above which a run says so, with faster options


def ranged(kind: Callable[[str], Any], lo=None, hi=None, lo_open=False, hi_open=False):
    """An argparse ``type`` that parses with ``kind`` and checks lo <= value <= hi.

    The bounds are open when ``lo_open``/``hi_open``. Errors name the valid range. NaN and
    infinities are refused for every float (a NaN passes any comparison-based range check).
    """

    def parse(text: str):
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"not a valid {kind.__name__}: {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
        bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
        if bad_lo or bad_hi:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            raise argparse.ArgumentTypeError(
                f"{text} is out of range {left}{'-inf' if lo is None else lo}, "
                f"{'inf' if hi is None else hi}{right}"
            )
        return value

    parse.__name__ = kind.__name__
    return parse


class LazyChoices:
    """argparse ``choices`` read from a library table on first use (a membership check, the help
    or an error message), so that building the parsers imports no torch. Parsing a flag that
    has such choices, or printing the subcommand's help, imports the table's module. Give the
    argument a ``metavar`` (argparse lists the choices of one without it as soon as it is added)
    and ``%(choices)s`` in its help."""

    def __init__(self, load: Callable[[], Iterable[str]]):
        self._load = load
        self._names: tuple[str, ...] | None = None

    def names(self) -> tuple[str, ...]:
        if self._names is None:
            self._names = tuple(self._load())
        return self._names

    def __contains__(self, value: object) -> bool:
        return value in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def _solver_names() -> Iterable[str]:
    from odedit.solvers import SOLVERS

    return SOLVERS


def _method_names() -> Iterable[str]:
    from odedit.restorers import METHODS

    return METHODS


def _preset_names() -> Iterable[str]:
    from odedit.restorers import PRESETS

    return PRESETS


SOLVER_CHOICES = LazyChoices(_solver_names)  # odedit.solvers.SOLVERS
METHOD_CHOICES = LazyChoices(_method_names)  # odedit.restorers.METHODS
PRESET_CHOICES = LazyChoices(_preset_names)  # odedit.restorers.PRESETS


def int_list(text: str) -> tuple[int, ...]:
    """Parse '0,25,50,75' into a tuple of ints."""
    try:
        return tuple(int(p) for p in text.split(",") if p.strip() != "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def float_list(text: str) -> tuple[float, ...]:
    """Parse '0.3,0.5' into a tuple of floats."""
    try:
        values = tuple(float(p) for p in text.split(",") if p.strip() != "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def resolve_device(name: str):
    """Map ``auto|cpu|cuda|mps`` (or ``cuda:N``) to a ``torch.device``; CLIError if unavailable."""
    from odedit.devices import resolve_device as resolve

    try:
        return resolve(name)
    except ValueError as err:
        raise CLIError(str(err)) from None


def add_odedit_override_args(group) -> None:
    """ODEdit flags shared by ``restore`` and ``bench`` (each overrides the preset/paper value).

    ``--steps`` and ``--step-size`` are added by each command (bench takes a list of step sizes).
    """
    group.add_argument(
        "--langevin-steps",
        type=ranged(int, 0, MAX_LANGEVIN_STEPS),
        default=None,
        metavar="K",
        help=f"Langevin updates at EACH level, 0-{MAX_LANGEVIN_STEPS} (overrides the preset's total)",
    )
    group.add_argument(
        "--levels",
        type=int_list,
        default=None,
        help="grid levels for Langevin, 0 = least noise (default 0,25,50,75 scaled to --steps)",
    )
    group.add_argument("--temperature", type=ranged(float, 0.0), default=None, help="T (default 1/3)")
    group.add_argument(
        "--invert-to", type=ranged(int, 0, MAX_STEPS), default=None, help="top level of the inversion (below --steps)"
    )
    group.add_argument(
        "--clip-inversion", action="store_true", help="clip predicted x0 to [-1,1] while inverting"
    )
    group.add_argument(
        "--decode-threshold",
        type=ranged(float, 0.0, 1.0, lo_open=True),
        default=None,
        metavar="P",
        help="dynamic thresholding of predicted x0 at percentile P while decoding (e.g. 0.995)",
    )
    group.add_argument(
        "--solver",
        choices=SOLVER_CHOICES,
        default=None,
        metavar="SOLVER",
        help="ODE solver of inversion and decoding: %(choices)s (default: the preset's: dpm++2m for fast, ddim "
        "for light/medium/heavy); ddim is eq. 8, the paper's; dpm++2m is DPM-Solver++(2M) (second order, same "
        "model calls per step)",
    )
    group.add_argument(
        "--inversion-iters",
        type=ranged(int, 0, 20),
        default=None,
        metavar="J",
        help="fixed-point refinements per DDIM inversion step (default 0; needs --solver ddim): inversion "
        "becomes the exact inverse of decoding, at (1 + J) model calls per inversion step",
    )


def add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps (default: auto)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("float32", "bfloat16", "float16", "auto"),
        help="model compute dtype (default auto: bfloat16 on a CPU with bf16 hardware, AMX-BF16/AVX512-BF16, "
        "where it is 1.4-1.8x faster at +0.002 +- 0.007 dB; float32 everywhere else); schedule maths stay "
        "float64; restore.json records the dtype that ran",
    )


def add_compile_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compile",
        action="store_true",
        help="run the network through torch.compile: 1.13x faster on a CPU (measured, docs/performance.md), "
        "after a one-off compile of ~11-15 s; worth it for batches (~30+ faces), not for one image",
    )


def torch_dtype(name: str, device=None):
    """The torch dtype of a ``--dtype`` name; ``auto`` needs the resolved device."""
    from odedit.devices import resolve_dtype_for

    return resolve_dtype_for(name, device if device is not None else "cpu")


def prepare_outdir(path: Path) -> Path:
    """Create the output folder; a clear error if it exists as a file or cannot be made."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CLIError(f"output path {str(path)!r} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CLIError(f"cannot create output directory {str(path)!r}: {err.strerror}") from None
    return path


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM (``kill PID``, a job scheduler's stop) raises
    KeyboardInterrupt like Ctrl-C, so the command's own clean-up runs (e.g. bench.json
    records the run as interrupted) instead of the process dying mid-write. Outside the
    main thread (where signals cannot be handled) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

    old = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
