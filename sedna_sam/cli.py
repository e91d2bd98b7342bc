"""``sedna-sam`` command line: a thin argparse front, one subcommand per verb.

Each command module defines ``register(subparsers)``, which adds its subcommand(s) and
sets ``func`` (taking the parsed args, returning an exit code). No logic lives here.
Seed spellings with underscores (``--dataset_dir``) are accepted as aliases by the
modules themselves (argparse takes several option strings for one option).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from sedna_sam import __version__
from sedna_sam.errors import SednaSamError
from sedna_sam.log import setup_logging

# Modules that register subcommands, in --help order.
COMMAND_MODULES = [
    "sedna_sam.commands.annotate",
    "sedna_sam.commands.models",
    "sedna_sam.commands.demo",
    "sedna_sam.commands.convert",
    "sedna_sam.commands.doctor",
    "sedna_sam.commands.edge",
    "sedna_sam.commands.cloud",
    "sedna_sam.commands.lifelong",
    "sedna_sam.commands.init_dirs",
    "sedna_sam.commands.ls",
]

EPILOG = """\
The loop: edge run -> (shipper) -> cloud serve -> annotate -> ls push -> (person corrects)
-> ls pull -> TrainIds + Sedna index -> train -> eval -> deploy.
Run `sedna-sam COMMAND --help` for the options of one command.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sedna-sam",
        description="Turn an edge fleet's corner cases into labelled training data "
        "(SAM pre-annotation, Label Studio correction, 16-bit TrainIds) and better models "
        "on KubeEdge/Sedna.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sedna-sam {__version__}")
    parser.add_argument(
        "--log-level", default=None, help="DEBUG, INFO (default, or $LOG_LEVEL), WARNING, ERROR"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    setup_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except SednaSamError as exc:
        logging.getLogger("sedna_sam").error("%s", exc)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
