"""The ``saferl`` command: discovers the sub-commands in :mod:`saferl.commands`.

Errors (DESIGN.md): every command checks its inputs and output paths before any work. A user
error (an argument argparse refuses, or a :class:`~saferl.commands._checks.UsageError`) is one
line on stderr and exit status 2. An OSError during the work (disk full) or a diverged training
run (FloatingPointError) is one line, exit status 1; any other exception is a bug, reported as an
internal error in one line, exit status 1. ``saferl --debug COMMAND ...`` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback

from saferl import __version__, commands
from saferl.commands._checks import UsageError, describe


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default after its help, ``(default: X)``, unless the default is None
    or False (the help text says what happens then) or the help already mentions it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            default is None
            or default is False
            or default is argparse.SUPPRESS
            or (isinstance(default, (str, list, tuple)) and not default)
            or "default" in text
            or not (action.option_strings or action.nargs in (argparse.OPTIONAL, "*"))
        ):
            return action.help
        if isinstance(default, (list, tuple)):
            shown = " ".join(str(v) for v in default)
        else:
            shown = str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".strip()


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (with a pointer to ``--help``) and whose
    help shows defaults."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} "
                     f"(see `{self.prog} --help`)\n")  # fmt: skip


DEBUG_HELP = "on an error, print the Python traceback too"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command found in ``saferl.commands``."""
    parser = Parser(prog="saferl", description="Safe and certified learning for control and RL.")
    parser.add_argument("--version", action="version", version=f"saferl {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"saferl.commands.{info.name}")
        if hasattr(module, "register"):
            module.register(subparsers)
    for sub in subparsers.choices.values():
        # also accepted after the command; SUPPRESS keeps a top-level --debug from being reset
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help=DEBUG_HELP)  # fmt: skip
    return parser


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-command parsers by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _report(prog: str, kind: str, message: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    print(f"{prog}: {kind}: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse has printed
        return _exit_status(exc.code)
    if getattr(args, "func", None) is None:
        names = ", ".join(sorted(_commands(parser)))
        print(f"saferl: error: name a command: {names} (see `saferl --help`)", file=sys.stderr)
        return 2
    prog = f"saferl {args.command}"
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        _report(prog, "error", describe(exc), debug)
        return 2
    except KeyboardInterrupt:
        _report(prog, "error", "interrupted", debug)
        return 130
    except (OSError, FloatingPointError) as exc:
        # not a bug: the system (disk full, a file removed during the run) or a diverged run
        _report(prog, "error", describe(exc), debug)
        return 1
    except Exception as exc:
        message = f"{type(exc).__name__}: {describe(exc)}"
        if not debug:
            message += " (this is a bug; re-run with `saferl --debug ...` for the traceback)"
        _report(prog, "internal error", message, debug)
        return 1


if __name__ == "__main__":
    sys.exit(main())
