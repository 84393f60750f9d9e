#!/usr/bin/env python
"""Prepares datasets ahead of time (the same as the console script ``aeclust-data``).

    python scripts/build_data.py mnist fashion_mnist coil20      # raw files from $AECLUST_MANUAL_DIR or the web
    python scripts/build_data.py coil20 --option source=proc --option size=128 --manual-dir ~/raw
    python scripts/build_data.py hanja --option folder=~/hanja_scans
"""

import sys

from aeclust_jax.cli import data_main as main
from aeclust_jax.cli import run_main

if __name__ == "__main__":
    sys.exit(run_main(main))
