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

# Modules whose ``register(subparsers)`` adds sub-commands, in help order, with the commands each
# adds (kept in step with the modules by a test): a stage that fails to import still shows its
# commands, and running one says why it is unavailable instead of argparse's "invalid choice".
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "rig.commands": ("board", "check", "session"),
    "rig.capture.cli": ("record", "emulate"),
    "rig.calibration.cli": ("calibrate",),
    "rig.registration.cli": ("register", "register-and-fuse"),
    "rig.registration.labels": ("labels",),
    "rig.model.cli": ("train", "eval", "model"),
    "rig.demo": ("demo",),
}


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
    for name, commands in COMMAND_MODULES.items():
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # a broken install or a missing dependency: say so when the command is used
            _register_unavailable(sub, name, commands, exc)
            continue
        module.register(sub)
    return parser


def _register_unavailable(sub, module: str, commands: Sequence[str], exc: Exception) -> None:
    """Placeholders for the commands of a stage that failed to import."""
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    message = (f"'{{command}}' is unavailable: importing {module} failed ({reason}); "
               "reinstall rig with its dependencies (pip install -e .), or run 'rig --debug {{command}}' for the traceback")

    def handler(args: argparse.Namespace) -> int:
        if args.debug:
            raise exc
        raise RigError(message.format(command=args.command))

    for command in commands:
        p = sub.add_parser(command, help=f"(unavailable: {module} failed to import)", add_help=False)
        p.set_defaults(handler=handler, unavailable=True)  # its options are unknown: any are accepted


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "unavailable", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
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
