#!/usr/bin/env python
"""Train one model on one dataset and evaluate it.

    python scripts/train.py --model dae_skip --dataset mnist [--epochs 5] [--out runs/x]

The model name picks the study recipe (S1: cae, cae_skip, dae, dae_skip; S3: mlp, mlp_ae;
S4: dsc); each recipe documents its own options (``--model NAME --help``).
"""

import sys

from aeclust_jax.cli import MODEL_STUDY, UsageError, peek_option, run_main, study_module


def main(argv):
    model = peek_option(argv, "--model")
    if model is None:
        if "-h" in argv or "--help" in argv:
            print(__doc__)
            return 0
        raise UsageError(f"--model is required; choices: {', '.join(sorted(MODEL_STUDY))}")
    return study_module(model, MODEL_STUDY, "model").train_main(argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
