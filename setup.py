"""Builds the ``dsfd._C`` torch extension.

CUDA or CPU-only is decided from the *installed torch build* and the *nvcc on
disk*, never from ``torch.cuda.is_available()`` (build machines have no GPU):

* ``FORCE_CUDA=1``  build the CUDA kernels or fail loudly saying why;
* ``FORCE_CUDA=0``  build the CPU kernels only;
* unset            CUDA when torch is a CUDA build and an nvcc of the same
                   major version is found, else CPU-only (one line says why).

``TORCH_CUDA_ARCH_LIST`` is respected; it defaults to ``9.0`` (Hopper).
"""

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _log(msg: str) -> None:
    print(f"[dsfd setup] {msg}", file=sys.stderr, flush=True)


def _find_cuda_home():
    """Directory holding bin/nvcc *and* include/cuda_runtime.h.

    ``/usr/local/bin/nvcc`` can be a wrapper script; torch would then guess
    CUDA_HOME=/usr/local and fail to link cudart. Only accept a directory
    that really is a toolkit root.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for home in candidates:
        if (
            home
            and os.path.isfile(os.path.join(home, "bin", "nvcc"))
            and os.path.isfile(os.path.join(home, "include", "cuda_runtime.h"))
        ):
            return home
    return None


def _nvcc_version(cuda_home):
    try:
        out = subprocess.check_output([os.path.join(cuda_home, "bin", "nvcc"), "--version"], text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _decide_cuda():
    """Returns (build_cuda, cuda_home, reason)."""
    import torch  # noqa: F401  (imported only to read its build info)

    force = os.environ.get("FORCE_CUDA", "").strip()
    torch_cuda = torch.version.cuda
    cuda_home = _find_cuda_home()
    problem = None
    if torch_cuda is None:
        problem = f"torch {torch.__version__} is a CPU-only build"
    elif cuda_home is None:
        problem = "no CUDA toolkit found (set CUDA_HOME to the folder holding bin/nvcc and include/)"
    else:
        nv = _nvcc_version(cuda_home)
        if nv is None:
            problem = f"could not read the nvcc version in {cuda_home}"
        elif str(nv[0]) != torch_cuda.split(".")[0]:
            problem = f"nvcc {nv[0]}.{nv[1]} in {cuda_home} does not match torch's CUDA {torch_cuda}"
    if force == "0":
        return False, None, "FORCE_CUDA=0"
    if problem is not None:
        if force == "1":
            raise RuntimeError(f"FORCE_CUDA=1 but the CUDA kernels cannot be built: {problem}")
        return False, None, problem
    return True, cuda_home, f"torch CUDA {torch_cuda}, toolkit {cuda_home}"


def _extensions():
    build_cuda, cuda_home, reason = _decide_cuda()
    if build_cuda:
        # Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME once.
        os.environ["CUDA_HOME"] = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        _log(f"building CPU + CUDA kernels ({reason}; arch {os.environ['TORCH_CUDA_ARCH_LIST']})")
    else:
        _log(f"building CPU-only kernels: {reason}")

    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "ops", "**", "*.cpp"), recursive=True))
    # -g0: Python's default CFLAGS carry -g (4 MB .so, slower compiles).
    # -ffp-contract=off: no fused multiply-adds, so kernels compiled for AVX2 / AVX-512 too
    # (target_clones) round exactly as the baseline x86-64 build does.
    cxx_flags = ["-O3", "-g0", "-ffp-contract=off"]
    link_flags = []
    # The CPU kernels split their loops with at::parallel_for, which is OpenMP inline code in the
    # headers of an OpenMP torch build: without -fopenmp it compiles to a serial loop (measured: the
    # kernels ran at the same speed on 1 and 2 threads). torch_scatter / torch_cluster do the same.
    # torch ships libgomp.so.1, so the extension's libgomp.so.1 resolves to torch's own copy.
    import torch
    if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    define_macros = []
    if build_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "ops", "cuda", "*.cu")))
        # --fmad=false: IoU values then match the CPU kernels and torchvision bit for bit.
        nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "--fmad=false"]
        define_macros.append(("DSFD_WITH_CUDA", None))
        ext = CUDAExtension(
            "dsfd._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=link_flags,
        )
    else:
        ext = CppExtension(
            "dsfd._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    package_data={"dsfd": ["weights/*", "assets/*"]},
)
