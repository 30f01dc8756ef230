"""The ``storecomp`` command line.

Each command lives in its own module under ``storecomp.cli`` with two
functions: ``add_parser(sub)`` registers its subparser(s) and sets
``func=main`` on them, ``main(args) -> int`` runs it. Modules are listed in
:data:`COMMANDS`; heavy imports stay inside ``main``.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys

from ..errors import StorecompError

#: Command modules, in the order ``storecomp --help`` lists them.
COMMANDS = ("info", "bench", "store", "dataset", "gc", "kv")


class _Parser(argparse.ArgumentParser):
    """argparse that suggests the nearest command or option on a typo."""

    def error(self, message: str) -> None:  # type: ignore[override]
        hint = ""
        words = [a for a in sys.argv[1:] if not a.startswith("-")] + [a for a in sys.argv[1:] if a.startswith("--")]
        choices = _words(self)
        for w in words:
            match = difflib.get_close_matches(w.split("=")[0], choices, n=1)
            if match and match[0] != w:
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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="storecomp", description="Storage-compute coordination: storage to accelerator memory.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except StorecompError as e:
        print(f"storecomp: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a local file the command was given: missing, unreadable, not writable
        print(f"storecomp: error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
