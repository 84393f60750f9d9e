#!/usr/bin/env python
"""Train one model on one dataset and evaluate it (the same as the console script ``aeclust-train``).

    python scripts/train.py --model dae_skip --dataset mnist [--epochs 5] [--out runs/x]
    python scripts/train.py --help                  # every model and its study's options
    python scripts/train.py --model dae_skip --help # one study's options, with defaults
"""

import sys

from aeclust_jax.cli import run_main
from aeclust_jax.cli import train_main as main

if __name__ == "__main__":
    sys.exit(run_main(main))
