"""The ``dsfd`` command line (also ``python -m dsfd``).

Each subcommand lives beside the code it drives and exposes
``add_parser(subparsers)``, which registers its arguments and sets
``func`` (called with the parsed namespace, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# Subcommand modules; one that is not installed is left out of the parser.
_SUBCOMMANDS = [
    "dsfd.evaluation.cli",
    "dsfd.training.cli",
    "dsfd.training.anchor_stats",
    "dsfd.inference.cli",
    "dsfd.export.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsfd", description="Dual Shot Face Detector tools.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _SUBCOMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and (name == e.name or name.startswith(e.name + ".")):
                continue  # that subcommand's package is not part of this install
            raise
        module.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
