#!/usr/bin/env python
"""Prepares datasets ahead of time: python scripts/build_data.py NAME... [options].

Examples:
  python scripts/build_data.py mnist fashion_mnist coil20      # raw files from $AECLUST_MANUAL_DIR or the web
  python scripts/build_data.py coil20 --option source=proc --option size=128 --manual-dir ~/raw
  python scripts/build_data.py hanja --option folder=~/hanja_scans
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

import yaml
from tqdm import tqdm

from aeclust_jax.cli import UsageError, run_main


def parse_options(pairs: Sequence[str]) -> dict:
    """``["size=128", "source=proc"]`` -> ``{"size": 128, "source": "proc"}`` (YAML scalars)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--option expects KEY=VALUE, got {pair!r}")
        options[key] = yaml.safe_load(value) if value else ""
    return options


def main(argv: Sequence[str]) -> int:
    from aeclust_jax import data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("names", nargs="+", metavar="NAME", help=f"one of: {', '.join(data.DATASETS)}")
    parser.add_argument("--data-dir", help="where prepared datasets go (default $AECLUST_DATA_DIR "
                                           "or ~/aeclust_data)")
    parser.add_argument("--manual-dir", type=pathlib.Path,
                        help="folder with the raw files, or a root with one sub-folder per dataset")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="builder option (repeatable), e.g. size=128; see docs/data.md")
    parser.add_argument("--offline", action="store_true", help="never try to download")
    parser.add_argument("--no-verify-checksums", action="store_true",
                        help="accept raw files whose md5 differs from the canonical one")
    args = parser.parse_args(argv)

    for name in args.names:  # validate everything before preparing anything
        data.builder_class(name)
    options = parse_options(args.option)
    if args.offline:
        options["download"] = False
    if args.no_verify_checksums:
        options["verify_checksums"] = False
    for name in tqdm(args.names, desc="datasets", unit="dataset", disable=len(args.names) < 2):
        manual = args.manual_dir
        if manual is not None and (manual / name).is_dir():
            manual = manual / name
        b = data.prepare(name, data_dir=args.data_dir, manual_dir=manual, **options)
        sizes = ", ".join(f"{split} {info.num_examples}" for split, info in b.info.splits.items())
        print(f"{name}: {sizes} -> {b.data_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
