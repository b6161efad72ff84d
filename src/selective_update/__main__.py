"""Command line: `python -m selective_update {study,bench,data} ...`."""
from __future__ import annotations

import argparse
import importlib
import sys

# Each subcommand lives in its own module: add_arguments(parser) and main(args) -> int.
COMMANDS = {
    "study": ("selective_update.study.cli",
              "run every strategy's notebook with papermill, write reports/"),
    "bench": ("selective_update.bench.cli", "time one step of each strategy in both frameworks"),
    "data": ("selective_update.datasets", "regenerate the CSV files under data/"),
    "docs": ("selective_update.docs",
             "refresh the README's and docs/'s generated tables from reports/"),
}


def build_parser():
    """Build the argparse parser with one subparser per command."""
    parser = argparse.ArgumentParser(prog="python -m selective_update",
                                     description="selective-update: keep chosen MLP outputs fixed.")
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{" + ",".join(COMMANDS) + "}")
    for name, (module, help_text) in COMMANDS.items():
        importlib.import_module(module).add_arguments(sub.add_parser(name, help=help_text,
                                                                     description=help_text))
    return parser


def main(argv=None) -> int:
    """Parse arguments (usage errors exit 2 before any work) and run the command."""
    args = build_parser().parse_args(argv)
    return importlib.import_module(COMMANDS[args.command][0]).main(args) or 0


if __name__ == "__main__":
    sys.exit(main())
