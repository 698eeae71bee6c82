"""dsfd.cpu_memory: a CPU Detector raises glibc's malloc thresholds (once, unless told not to).

The speed it buys (no page faults on every forward's activations, ~15% at
640x480) is measured in benchmarks, not here: how many faults a forward takes
without it depends on the allocation history, so a fault count is no stable
test. What is tested: glibc accepts the settings, the Detector applies them,
and the opt-outs are honoured. Each case runs in a fresh process (the
settings are process-wide and applied once).
"""

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="the malloc thresholds are glibc's")

_DETECTOR_APPLIES = (
    "import warnings; warnings.simplefilter('ignore')\n"
    "from dsfd import cpu_memory\n"
    "from dsfd.inference import Detector\n"
    "assert cpu_memory._state is None\n"
    "Detector(device='cpu', dtype='float32', network='paper', backbone='tiny')\n"
    "print(cpu_memory._state)\n"
)


def _run(code: str, **env_changes: str) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DSFD_RETAIN_CPU_MEMORY", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_glibc_accepts_the_thresholds_and_a_cpu_detector_sets_them():
    assert _run("from dsfd.cpu_memory import retain_freed_memory as r; print(r(), r())") == "True True"
    assert _run(_DETECTOR_APPLIES) == "True"


@pytest.mark.parametrize("env", [{"DSFD_RETAIN_CPU_MEMORY": "0"}, {"MALLOC_TRIM_THRESHOLD_": "1000000"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}])
def test_opt_outs_are_honoured(env):
    assert _run(_DETECTOR_APPLIES, **env) == "False"
