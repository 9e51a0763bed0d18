"""The ``saferl`` command: discovers the sub-commands in :mod:`saferl.commands`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from saferl import __version__, commands


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command found in ``saferl.commands``."""
    parser = argparse.ArgumentParser(
        prog="saferl", description="Safe and certified learning for control and RL."
    )
    parser.add_argument("--version", action="version", version=f"saferl {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"saferl.commands.{info.name}")
        if hasattr(module, "register"):
            module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
