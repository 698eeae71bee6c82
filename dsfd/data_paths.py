"""Where the data sets live.

Every module that needs a data set finds it through one of these helpers, so
a single environment variable moves it:

* ``DSFD_WIDER_ROOT``: the WIDER FACE folder laid out like the official
  release (``WIDER_val/images/<event>/*.jpg``, ``wider_face_split/``,
  ``ground_truth/wider_{face,easy,medium,hard}_val.mat``).  Default:
  ``../shared/data/widerface`` relative to the repository root.
* ``DSFD_FDDB_ROOT``: the FDDB folder (``FDDB-folds/``, ``originalPics/``).
  Default: ``../shared/data/fddb`` relative to the repository root.
* ``DSFD_FIXTURES_ROOT``: the test fixtures (``official_*_state_dict.tsv``,
  ``wider_eval_predictions/``, ...). Default: ``../shared/fixtures``
  relative to the repository root.

The helpers only build paths; they never check that the folder exists (the
callers decide whether a missing folder is an error or a reason to skip).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["repo_root", "wider_root", "fddb_root", "fixtures_root"]


def repo_root() -> Path:
    """The repository (source checkout) that holds this package."""
    return Path(__file__).resolve().parents[1]


def _from_env(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    if value:
        return Path(value).expanduser().resolve()
    return default.resolve()


def wider_root() -> Path:
    """The WIDER FACE root: ``$DSFD_WIDER_ROOT`` or ``<repo>/../shared/data/widerface``."""
    return _from_env("DSFD_WIDER_ROOT", repo_root() / ".." / "shared" / "data" / "widerface")


def fddb_root() -> Path:
    """The FDDB root: ``$DSFD_FDDB_ROOT`` or ``<repo>/../shared/data/fddb``."""
    return _from_env("DSFD_FDDB_ROOT", repo_root() / ".." / "shared" / "data" / "fddb")


def fixtures_root() -> Path:
    """The test fixtures folder: ``$DSFD_FIXTURES_ROOT`` or ``<repo>/../shared/fixtures``."""
    return _from_env("DSFD_FIXTURES_ROOT", repo_root() / ".." / "shared" / "fixtures")
