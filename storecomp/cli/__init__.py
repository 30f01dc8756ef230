"""The ``storecomp`` command line.

Each command lives in its own module under ``storecomp.cli`` with two
functions: ``add_parser(sub)`` registers its subparser(s) and sets
``func=main`` on them, ``main(args) -> int`` runs it. Modules are listed in
:data:`COMMANDS`; heavy imports stay inside ``main``.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib
import os
import select
import sys
from typing import Any

from ..errors import StorecompError
from ..redact import redact

#: Command modules, in the order ``storecomp --help`` lists them.
COMMANDS = ("info", "bench", "store", "place", "dataset", "gc", "kv")


class _Parser(argparse.ArgumentParser):
    """argparse that suggests the nearest command or option on a typo (in ``argv``, the
    arguments being parsed: ``sys.argv[1:]`` when not given)."""

    def __init__(self, *args: Any, argv: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.argv = argv

    def add_subparsers(self, **kwargs: Any) -> Any:
        kwargs.setdefault("parser_class", functools.partial(_Parser, argv=self.argv))
        return super().add_subparsers(**kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        hint = ""
        argv = sys.argv[1:] if self.argv is None else self.argv
        words = [a for a in argv if not a.startswith("-")] + [a for a in argv if a.startswith("--")]
        choices = _words(self)
        for w in words:
            match = difflib.get_close_matches(w.split("=")[0], choices, n=1)
            if match and match[0] != w.split("=")[0]:
                hint = f"\ndid you mean {match[0]!r}?"
                break
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}{hint}\n")


def _words(parser: argparse.ArgumentParser) -> list[str]:
    """Every command and option name of ``parser`` and its subcommands."""
    out: list[str] = []
    for action in parser._actions:
        out += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out.append(name)
                out += _words(child)
    return out


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``storecomp`` parser; ``argv`` (default ``sys.argv[1:]``) is what its typo hints look at."""
    p = _Parser(prog="storecomp", description="Storage-compute coordination: storage to accelerator memory.", argv=argv)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        rc = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return rc
    except BrokenPipeError as e:
        if not _stdout_gone():  # a socket or pipe of the command's own, not the reader of our output
            print(f"storecomp: error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
            return 1
        _silence_stdout()
        return 0  # `storecomp ... | head`: the reader had enough; like head's other writers, not an error
    except StorecompError as e:
        print(f"storecomp: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a local file the command was given: missing, unreadable, not writable
        print(redact(f"storecomp: error: {str(e.filename) + ': ' if e.filename else ''}{e.strerror or e}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _stdout_gone() -> bool:
    """Whether our stdout is a pipe whose reader has closed it."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a test harness, or closed
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
