"""One command-line vocabulary for every ``dsfd`` command (the table is in docs/cli.md).

A flag that means the same thing in several commands is defined here once, so
its name, type, default and help cannot drift apart between commands;
``tests/test_cli_vocabulary.py`` walks every parser and checks it.

* ``--device``: where the work runs (``auto``: CUDA when available).
* ``--dtype``: precision of the network (``auto``, ``float32``, ``bfloat16``, ``float16``).
* ``--no-progress``: no progress bars.
* ``--data`` / ``--data-format`` / ``--images`` / ``--category`` / ``--strict``:
  annotated data to read and how.
* ``--output-format``: what ``dsfd detect`` writes.
* ``--max-size``: the longer side an image is downscaled to before detection.
* ``--weights``, ``--out`` and every other path: empty values are errors.

Old spellings (``--format`` in both meanings, ``--amp``, ``--quiet``, an
integer ``dsfd anchors --images N``) keep working for one release and print a
deprecation message naming the new flag.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from .constants import DEFAULT_MAX_SIZE, MIN_INPUT_SIZE

__all__ = [
    "DATA_FORMATS", "DTYPES", "DEVICE_DEFAULT", "DEFAULT_MAX_SIZE", "MIN_MAX_SIZE",
    "nonempty_path", "nonempty_text", "max_size_value", "deprecated_alias",
    "add_device", "add_dtype", "add_progress", "add_data", "add_max_size", "add_weights",
    "device_or_none", "AMP_OF_DTYPE",
]

DATA_FORMATS = ("auto", "wider", "coco", "yolo")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_DEFAULT = "auto"
#: ``--max-size`` at least the smallest input the networks take.
MIN_MAX_SIZE = MIN_INPUT_SIZE
#: ``dsfd train``'s autocast setting for each ``--dtype`` (``TrainConfig.amp``).
AMP_OF_DTYPE: Dict[str, str] = {"auto": "auto", "bfloat16": "bf16", "float16": "fp16", "float32": "none"}


def nonempty_path(text: str) -> Path:
    """A path argument; an empty one is an error (``Path("")`` would silently mean the current folder)."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError("an empty path was given")
    return Path(text)


def nonempty_text(text: str) -> str:
    """A weights name, file or URL; an empty one is an error (it would silently mean no weights)."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError("an empty value was given")
    return text


def max_size_value(text: str) -> int:
    """``--max-size``: an integer >= 32."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < MIN_MAX_SIZE:
        raise argparse.ArgumentTypeError(
            f"must be >= {MIN_MAX_SIZE} (the smallest input the network takes), got {value}")
    return value


def device_or_none(device: Optional[str]) -> Optional[str]:
    """``None`` for ``auto`` (the APIs' own spelling of "choose for me"), the device otherwise."""
    return None if device is None or str(device).lower() == DEVICE_DEFAULT else device


def _warn_deprecated(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    print(f"{parser.prog}: warning: {old} is deprecated and will be removed in the next release; use {new}",
          file=sys.stderr)


def deprecated_alias(new: str, convert: Optional[Callable[[str], Any]] = None,
                     const: Any = None) -> type:
    """An argparse action for an old spelling: warns once per use, then stores like ``new`` does.

    ``convert`` maps the old value to the new one (``--amp bf16`` -> ``bfloat16``);
    ``const`` makes it a flag without a value (``--quiet``).
    """

    class DeprecatedAlias(argparse.Action):
        def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
            if const is not None:
                kwargs["nargs"] = 0
            kwargs.setdefault("help", argparse.SUPPRESS)  # documented once, in the new flag's place
            kwargs.setdefault("default", argparse.SUPPRESS)  # the new flag's default stands
            super().__init__(option_strings, dest, **kwargs)

        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                     option_string: Optional[str] = None) -> None:
            _warn_deprecated(parser, option_string or self.option_strings[0], new)
            if const is not None:
                values = const
            elif convert is not None:
                values = convert(values)
            setattr(namespace, self.dest, values)

    return DeprecatedAlias


def add_device(group: Any, what: str = "the network") -> None:
    group.add_argument("--device", default=DEVICE_DEFAULT, type=nonempty_text,
                       help=f"where {what} runs: auto (CUDA when available, else the CPU), cpu, cuda or cuda:N "
                            f"(under torchrun: cuda:LOCAL_RANK) (default %(default)s)")


def add_dtype(group: Any, what: str = "network precision") -> None:
    group.add_argument("--dtype", choices=list(DTYPES), default="auto",
                       help=f"{what} (auto: bfloat16 on CUDA and on CPUs with bf16 in hardware, float32 elsewhere; "
                            f"float16: CUDA only) (default %(default)s)")


def add_progress(parser: Any, old_quiet: bool = False) -> None:
    """``--no-progress``; ``old_quiet``: also the old spelling ``--quiet`` of the commands that had it."""
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    if old_quiet:
        parser.add_argument("--quiet", dest="progress", action=deprecated_alias("--no-progress", const=False))


def add_weights(group: Any, help: str, dest: str = "weights") -> None:
    group.add_argument("--weights", dest=dest, type=nonempty_text, default=None, help=help)


def add_max_size(group: Any) -> None:
    group.add_argument("--max-size", type=max_size_value, default=None, metavar="PX",
                       help=f"downscale images whose longer side exceeds PX before detecting (default "
                            f"{DEFAULT_MAX_SIZE}; at least {MIN_MAX_SIZE})")


def add_data(group: Any, *, repeatable: bool, data_help: str, category_help: str,
             images_help: str = "image folder of a COCO --data file (default: found next to it)") -> None:
    """``--data``, ``--data-format`` (old spelling ``--format``), ``--images``, ``--category``, ``--strict``."""
    group.add_argument("--data", type=nonempty_path, action="append" if repeatable else "store", default=None,
                       metavar="ROOT", help=data_help)
    group.add_argument("--data-format", dest="data_format", choices=list(DATA_FORMATS), default="auto",
                       help="annotation format of --data (auto: detected per root) (default %(default)s)")
    group.add_argument("--format", dest="data_format", choices=list(DATA_FORMATS),
                       action=deprecated_alias("--data-format"))
    group.add_argument("--images", type=nonempty_path, default=None, metavar="DIR", help=images_help)
    group.add_argument("--category", action="append", type=nonempty_text, metavar="NAME_OR_ID", help=category_help)
    group.add_argument("--strict", action="store_true",
                       help="stop at the first bad annotation (COCO / YOLO) instead of skipping and counting it")
