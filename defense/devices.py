"""What this process computes with: the CUDA runtime and devices pycaffe sees, and the threads
of the BLAS Caffe uses. Read from the loaded libraries (or asked of a child process), without
initialising Caffe or CUDA (a forked worker must find CUDA untouched), so this module imports
nothing of the toolkit.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional


def cuda_runtime_path() -> Optional[str]:
    """The libcudart this process's pycaffe loaded, or None for a CPU-only Caffe build (or no procfs)."""
    paths = _loaded_libraries("libcudart.so")
    return paths[0] if paths else None


def _loaded_libraries(fragment: str) -> List[str]:
    """Paths of the shared libraries this process has mapped whose name holds ``fragment``."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if fragment in line.rsplit("/", 1)[-1]}
    except OSError:
        return []
    return sorted(paths)


def _caffe_openblas():
    """The OpenBLAS Caffe links, through ctypes, or None (another BLAS, or Caffe not loaded):
    numpy's and scipy's own OpenBLAS copies (their wheels' ``.libs`` folders) are not it."""
    import ctypes

    for path in _loaded_libraries("libopenblas"):
        if ".libs/" not in path:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                return None
            wanted = ("openblas_get_num_threads", "openblas_set_num_threads")
            return lib if all(hasattr(lib, name) for name in wanted) else None
    return None


def blas_threads() -> Optional[int]:
    """Threads of the OpenBLAS that Caffe computes with, or None when it links another BLAS.

    Caffe's CPU results depend on it (each thread sums its own block of a GEMM, and with more than
    one thread the convolutions split a batch's images between the cores, each part summing its
    own weight gradient), so a resumed run is byte-identical only with the same count."""
    lib = _caffe_openblas()
    return None if lib is None else int(lib.openblas_get_num_threads())


@contextmanager
def blas_thread_count(threads: int) -> Iterator[None]:
    """Caffe's CPU threads (OpenBLAS's, and with them the convolutions' image split) set to
    ``threads`` inside the block, restored after: what ``OPENBLAS_NUM_THREADS`` sets at start-up,
    changed within one process so that a benchmark can time both side by side."""
    lib = _caffe_openblas()
    if lib is None:
        raise RuntimeError("Caffe does not link OpenBLAS (or is not loaded): its threads cannot be set")
    saved = int(lib.openblas_get_num_threads())
    lib.openblas_set_num_threads(int(threads))
    try:
        yield
    finally:
        lib.openblas_set_num_threads(saved)


def cuda_device_count() -> tuple:
    """``(count, reason)`` from the CUDA runtime pycaffe links; ``(None, why)`` on a CPU-only build.

    Asked through ctypes because Caffe aborts the process (not raises) on a bad device.
    """
    path = cuda_runtime_path()
    if path is None:
        return None, "this Caffe build has no CUDA"
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no NVIDIA driver: libcuda.so.1 not found"
    cudart = ctypes.CDLL(path)
    cudart.cudaGetErrorString.restype = ctypes.c_char_p
    count = ctypes.c_int(0)
    status = cudart.cudaGetDeviceCount(ctypes.byref(count))
    if status != 0:
        cudart.cudaGetLastError()
        return 0, cudart.cudaGetErrorString(status).decode(errors="replace")
    return count.value, "ok" if count.value else "no CUDA device"


def gpu_available() -> bool:
    """True when this pycaffe was built with CUDA and a device answers (asked in a child process,
    so that this one's CUDA state stays uninitialised for forked workers)."""
    import subprocess
    code = ("import os; os.environ['GLOG_minloglevel']='3'; from defense.devices import cuda_device_count; "
            "print((cuda_device_count()[0] or 0) > 0)")
    try:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             cwd=Path(__file__).resolve().parents[1])
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0 and res.stdout.strip() == "True"
