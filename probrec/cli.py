"""The ``probrec`` command line: one entry point, subcommands imported lazily.

Each subcommand lives in a module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
the module is imported only when its subcommand runs, so ``probrec --help`` is instant and
``probrec`` never imports :mod:`metalearn` or :mod:`samplers` unless asked to.

Checks argparse cannot make when it parses one option (options that cannot go together) are
made in ``run``, which raises :class:`UsageError`; :func:`main` reports it as a usage error
(exit status 2) of the parser stored under the ``_usage_parser`` default (a subcommand's own
parser), else of the command's parser, not as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("probrec.demo", "run the end-to-end demo on embedded data and write a report"),
    "bench": ("probrec.bench", "run a benchmark (e.g. `probrec bench samplers`)"),
    "featurize": ("probrec.data.featurize_cli", "featurize a molecule CSV into a cached matrix"),
    "info": ("probrec.info", "print versions, devices and where the data folders are"),
}


class UsageError(ValueError):
    """Command-line options that cannot go together (raised by a subcommand's ``run``; the
    message names the options). A ``ValueError``, for code calling ``run`` directly."""


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: probrec <command> [options]",
        "",
        "Bayesian and meta-learning models that learn from few examples.",
        "",
        "commands:",
    ]
    lines += [f"  {n.ljust(width)}  {h}" for n, (_, h) in COMMANDS.items()]
    lines += ["", "Run `probrec <command> --help` for the options of a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``probrec`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if argv[0] == "--version":
        from probrec import __version__

        print(f"probrec {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"probrec: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"probrec {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except UsageError as exc:  # was a traceback (exit status 1)
        getattr(args, "_usage_parser", parser).error(str(exc))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
