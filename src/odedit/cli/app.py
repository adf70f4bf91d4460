"""``odedit app``: the web demo (Gradio) on the embedded prior or any model."""

from __future__ import annotations

import argparse
import sys

from odedit.cli.common import CLIError, add_device_args, ranged


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "app",
        help="web demo in the browser (Gradio; pip install 'odedit[app]')",
        description="Serve a web page to restore faces interactively: upload a photo or pick a sample, "
        "optionally degrade it first, choose ODEdit or SDEdit and their settings, see before/after and "
        "download the result. One restoration runs at a time. Runs offline on the embedded prior.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=ranged(int, 1, 65535), default=7860, help="port (default 7860)")
    p.add_argument("--model", default=None, metavar="PATH_OR_HUB_ID", help="default: the embedded face prior")
    add_device_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from odedit.app import AppUnavailable, Engine, build_app
    from odedit.models import ModelLoadError

    try:
        import gradio  # noqa: F401
    except ImportError:
        raise CLIError("the web app needs gradio; install it with: pip install 'odedit[app]'") from None
    try:
        engine = Engine(args.model, device=args.device, dtype=args.dtype)
    except (ModelLoadError, ValueError) as err:
        raise CLIError(str(err)) from None
    try:
        demo = build_app(engine)
    except AppUnavailable as err:
        raise CLIError(str(err)) from None
    print(f"odedit app: serving on http://{args.host}:{args.port} (Ctrl-C to stop)", file=sys.stderr)
    demo.launch(server_name=args.host, server_port=args.port, show_error=False, quiet=True)
    return 0
