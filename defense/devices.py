"""What this process computes with: the CUDA runtime and devices pycaffe sees, and the threads
of the BLAS Caffe uses. Read from the loaded libraries (or asked of a child process), without
initialising Caffe or CUDA (a forked worker must find CUDA untouched), so this module imports
nothing of the toolkit.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional


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


def blas_threads() -> Optional[int]:
    """Threads of the OpenBLAS that Caffe computes with, or None when it links another BLAS.

    Caffe's CPU results depend on it (each thread sums its own block of a GEMM), so a resumed run
    is byte-identical only with the same count; numpy's and scipy's own OpenBLAS copies (their
    wheels' ``.libs`` folders) are not the one Caffe uses."""
    import ctypes

    for path in _loaded_libraries("libopenblas"):
        if ".libs/" not in path:
            try:
                return int(ctypes.CDLL(path).openblas_get_num_threads())
            except (OSError, AttributeError):
                return None
    return None


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
