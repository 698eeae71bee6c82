import os

import pytest
import torch

CUDA = torch.cuda.is_available()


def pytest_report_header(config):
    import dsfd.extension as ext

    return [
        f"torch {torch.__version__} (CUDA build {torch.version.cuda}), GPU available: {CUDA}",
        f"dsfd._C loaded: {ext._has_ops()}, built with CUDA kernels: {ext.has_cuda_kernels()}",
        f"DSFD_WIDER_ROOT={os.environ.get('DSFD_WIDER_ROOT', '(default ../shared/data/widerface)')}",
        f"DSFD_FIXTURES_ROOT={os.environ.get('DSFD_FIXTURES_ROOT', '(default ../shared/fixtures)')}",
    ]


def cpu_and_cuda():
    """Parametrisation over devices; the CUDA case is skipped (and reported) without a GPU."""
    return [
        "cpu",
        pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs a CUDA device")),
    ]


@pytest.fixture(autouse=True)
def _restore_rng():
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)
