"""The ``deepalign`` command: a thin argparse layer over the library."""
import argparse
import importlib

from deepalign._version import __version__

# One module per sub-command; each defines ``register(subparsers)``.
_COMMANDS = ["info", "zoo", "train", "align", "evaluate", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepalign", description=__doc__)
    parser.add_argument("--version", action="version", version=f"deepalign {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(f"deepalign.cli._{name}").register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args) or 0
