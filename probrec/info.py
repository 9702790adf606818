"""``probrec info``: versions, devices and data locations (for bug reports)."""

from __future__ import annotations

import argparse
import importlib
import platform
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="../shared/data", help="data root to look for")


def run(args: argparse.Namespace) -> int:
    import torch

    from probrec import __version__

    print(f"probrec {__version__}  python {platform.python_version()}  torch {torch.__version__}")
    for mod in ("gpytorch", "botorch", "pyro", "sklearn", "rdkit", "sentence_transformers"):
        try:
            m = importlib.import_module(mod)
            print(f"  {mod:22s} {getattr(m, '__version__', '?')}")
        except ImportError:
            print(f"  {mod:22s} not installed")
    print(f"  cuda available: {torch.cuda.is_available()}  threads: {torch.get_num_threads()}")
    root = Path(args.data)
    print(f"  data root {root.resolve()}: {'found' if root.is_dir() else 'absent'}")
    return 0
