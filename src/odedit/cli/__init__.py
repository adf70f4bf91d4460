"""The ``odedit`` command line.

Each subcommand lives in its own module under ``odedit.cli`` and exposes
``add_parser(subparsers)`` and ``run(args) -> int``. Parsers import only the
standard library; heavy dependencies (torch, diffusers) are imported inside
``run`` so that ``odedit --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from odedit.cli.common import CLIError

# Subcommand name -> module. Order is the order shown in --help.
SUBCOMMANDS = ("restore", "corrupt", "train", "sample", "bench", "app")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="odedit",
        description="Restore degraded face photos with a diffusion prior (ODEdit, SDEdit baseline).",
    )
    from odedit import __version__

    parser.add_argument("--version", action="version", version=f"odedit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"odedit.cli.{name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except CLIError as err:
        print(f"odedit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"odedit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
