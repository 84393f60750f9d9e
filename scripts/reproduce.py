#!/usr/bin/env python
"""Reproduce one study's tables and figures (the same as the console script ``aeclust-reproduce``).

    python scripts/reproduce.py s1 [--datasets mnist fashion_mnist] [--epochs N] [--seeds 3]
    python scripts/reproduce.py s3 [--seeds 5]
    python scripts/reproduce.py s4 [--seeds 5]
"""

import sys

from aeclust_jax.cli import reproduce_main as main
from aeclust_jax.cli import run_main

if __name__ == "__main__":
    sys.exit(run_main(main))
