"""The ``rig`` command line. Thin: parse arguments, call the stage, print.

Each stage contributes its sub-commands through a ``register(subparsers)``
function in its own ``cli`` module (``rig.capture.cli``, ``rig.calibration.cli``,
``rig.model.cli``, ...). Handlers receive the parsed ``argparse.Namespace`` and
return an exit code. Heavy imports (torch, open3d) happen inside handlers so
that ``rig --help`` stays fast.

Errors: a :class:`~rig.errors.RigError` is printed as one red line and the
process exits with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from rig import __version__
from rig.errors import RigError

# Modules whose ``register(subparsers)`` adds sub-commands, in help order.
COMMAND_MODULES = (
    "rig.commands",
    "rig.capture.cli",
    "rig.calibration.cli",
    "rig.registration.cli",
    "rig.model.cli",
    "rig.demo",
)


class _RichHelpFormatter(argparse.RawDescriptionHelpFormatter):
    pass


class RichArgumentParser(argparse.ArgumentParser):
    """argparse with help rendered by rich: section headings, options and commands highlighted."""

    def print_help(self, file=None) -> None:  # noqa: D401 - argparse API
        try:
            from rich.console import Console
            from rich.text import Text
        except ImportError:  # pragma: no cover
            return super().print_help(file)
        text = Text(self.format_help())
        text.highlight_regex(r"(?m)^(usage|options|positional arguments|[a-z ]+ arguments):", "bold yellow")
        text.highlight_regex(r"(?<![\w-])--?[a-zA-Z][\w-]*", "cyan")
        text.highlight_regex(r"(?m)^    (?P<cmd>[a-z][\w-]+)(?=\s)", "bold green")
        Console(file=file, highlight=False, soft_wrap=False).print(text)


def build_parser() -> argparse.ArgumentParser:
    parser = RichArgumentParser(
        prog="rig",
        description="Visible + LWIR camera rig: calibrate, record, register, fuse and segment.",
        epilog="Run 'rig COMMAND --help' for a command's options. Without --rig, commands use the simulated rig.",
        formatter_class=_RichHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rig {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=RichArgumentParser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # stage not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.handler(args) or 0)
    except RigError as exc:
        if args.debug:
            raise
        _print_error(str(exc))
        return 2
    except KeyboardInterrupt:
        _print_error("interrupted")
        return 130


def _print_error(message: str) -> None:
    try:
        from rich.console import Console
        from rich.text import Text

        # Text, not markup: messages hold key paths such as "cameras[1].fps".
        Console(stderr=True, highlight=False, soft_wrap=True).print(Text.assemble(("error: ", "bold red"), message))
    except Exception:  # pragma: no cover - rich missing or broken terminal
        print(f"error: {message}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
