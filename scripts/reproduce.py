#!/usr/bin/env python
"""Reproduce one study's tables and figures, mean +- std over seeds.

    python scripts/reproduce.py s1 [--datasets mnist fashion_mnist] [--epochs N] [--seeds 3]
    python scripts/reproduce.py s3 [--seeds 5]
    python scripts/reproduce.py s4 [--seeds 5]

Runs already complete in --out are skipped, so an interrupted reproduction continues.
"""

import sys

from aeclust_jax.cli import STUDY_MODULE, UsageError, run_main, study_module


def main(argv):
    if not argv or argv[0].startswith("-"):
        if "-h" in argv or "--help" in argv:
            print(__doc__)
            return 0
        raise UsageError(f"name a study first; choices: {', '.join(sorted(STUDY_MODULE))}")
    return study_module(argv[0], STUDY_MODULE, "study").reproduce_main(argv[1:])


if __name__ == "__main__":
    sys.exit(run_main(main))
