"""Keep freed CPU memory for reuse (glibc malloc settings), so that a forward pass does not page-fault.

glibc hands large freed blocks back to the operating system: a block at or
above the mmap threshold (dynamic, from 128 KiB) is unmapped when freed, and
free memory at the top of the heap is trimmed beyond the trim threshold. A
network's activations are megabytes each, allocated and freed on every
forward pass, so each pass maps fresh pages and faults on the first touch of
each one. Measured on the default model at 640x480 (2-core Xeon with AMX,
bf16): 1,168 to 2,036 minor page faults per forward; with both thresholds
raised, 0, and the forward 14.5 -> 12.1 ms in a loop (beside YuNet, with
OpenCV in the same process, the end-to-end gain was ~2%). Raising only one
of them made it worse (fixed thresholds turn off glibc's own adjustment).

The settings are process-wide, as ``LD_PRELOAD``-ing jemalloc or tcmalloc
(what PyTorch's CPU performance guide recommends) would be: the process keeps
freed memory, up to the thresholds, instead of returning it. They are set by
:class:`dsfd.inference.Detector` on the CPU, once per process (not by
training: a CPU training step ran at the same speed with them, measured);
``DSFD_RETAIN_CPU_MEMORY=0`` in the environment turns that off, and
malloc settings the user already gave (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``) are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
from typing import Optional

__all__ = ["retain_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

_log = logging.getLogger(__name__)

#: Blocks below this come from the heap and are reused after ``free`` (glibc's maximum is 32 MiB on 64-bit).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the heap top beyond this goes back to the system.
TRIM_THRESHOLD = 128 << 20

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3

_state: Optional[bool] = None


def _user_malloc_settings() -> bool:
    env = os.environ
    return ("MALLOC_MMAP_THRESHOLD_" in env or "MALLOC_TRIM_THRESHOLD_" in env
            or "glibc.malloc" in env.get("GLIBC_TUNABLES", ""))


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (once per process); whether they are now raised.

    A no-op (``False``) off Linux / glibc, with ``DSFD_RETAIN_CPU_MEMORY=0``,
    or where the user set malloc thresholds themselves.
    """
    global _state
    if _state is not None:
        return _state
    _state = False
    if os.environ.get("DSFD_RETAIN_CPU_MEMORY", "1").strip() == "0" or _user_malloc_settings():
        return _state
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return _state
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return _state
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _state = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _log.debug("glibc malloc: mmap threshold %d, trim threshold %d: %s", MMAP_THRESHOLD, TRIM_THRESHOLD,
               "set" if _state else "refused")
    return _state
