"""Entry point of ``sharkcage`` and ``python -m sharkcage``.

Each sub-command lives in its own module exposing ``add_arguments(parser)``
and ``run(args) -> int``; modules are imported only when their command runs,
so ``sharkcage lint`` never pays for the engine and vice versa.

>>> main(["--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "tank": ("sharkcage.cli.tank", "run the sharks side by side: the stdlib pool, then sharkcage"),
    "doctor": ("sharkcage.cli.doctor", "report this environment's hazards, or diagnose a stuck process (--pid)"),
    "lint": ("sharkcage.cli.lint", "find the sharks in existing multiprocessing code"),
    "bench": ("sharkcage.cli.bench", "benchmark sharkcage against the installed peers"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sharkcage", description="Python process pools without the sharks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is not None and command not in COMMANDS:
        command = None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
