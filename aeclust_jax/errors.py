"""The project's user-facing errors: one base class, so the CLIs can tell a user's mistake from a bug.

    UserError                   something the user can fix (an option, a file, a dataset)
      UsageError                  a bad command line (unknown name, bad value, wrong combination)
      ConfigError                 a config file or value that does not fit the config dataclass
      DatasetError                raw dataset files that are unusable (corrupt, wrong format)
        ChecksumError
      MissingFilesError           raw dataset files that are neither local nor downloadable
      UnknownDatasetError         a dataset name, split or builder option that does not exist
      RunExistsError              the output folder already holds a run
      RunDirError                 the output folder cannot be used (missing for --resume, not a folder)
      TrainingDivergedError       the loss became non-finite (lower the learning rate)

The CLIs (``aeclust_jax.cli.run_main``) print a UserError as one line ``error: ...`` and exit 2;
any other exception is a bug and keeps its traceback (exit 1). The subclasses also derive from the
builtin they replace (ValueError, FileNotFoundError, ...) so ``except ValueError`` keeps working.
Each class lives beside its code (config.py, data/_base.py, runs.py, train/loop.py); this module
holds the base and the command-line one.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the CLIs print its message as one line and exit 2."""


class UsageError(UserError, ValueError):
    """Bad command-line input (unknown name, bad value, wrong combination of options)."""
