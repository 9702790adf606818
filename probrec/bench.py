"""``probrec bench <name>``: dispatches to benchmark runners registered here, imported lazily."""

from __future__ import annotations

import argparse
import importlib

# benchmark name -> (module with add_arguments / run, help)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "samplers": ("samplers.bench", "samplers on multimodal targets at equal budget"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="<benchmark>")
    for name, (module, help_) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_bench_module=module)
        # options are added lazily below; parse_known_args is avoided to keep errors strict
        importlib.import_module(module).add_arguments(p)


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(args._bench_module).run(args) or 0)
