"""Safe readers for the array files users bring (.npy, HDF5, MATLAB .mat).

Every reader raises ToolkitError naming the file, so a CLI prints one line and exits 2.
``.npy`` files are never unpickled (``allow_pickle=False``): a pickled file is an error.
An array's shape is read from the file's header first, and one over ``MAX_ARRAY_BYTES`` is refused
before it is allocated; complex numbers are refused (a cast would drop the imaginary part unsaid).
"""
from __future__ import annotations

import os
from pathlib import Path
from tokenize import TokenError
from typing import Dict, Optional

import numpy as np

from defense.core import ToolkitError, check_array_bytes, input_file


H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)
"""What h5py raises on a damaged file (bad superblock, bad object header, unreadable chunk ...)."""


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _real(dtype: np.dtype, source: str) -> None:
    """Refuse an array dtype that is not real numbers."""
    if np.issubdtype(dtype, np.complexfloating):
        raise ToolkitError(f"{source} holds complex numbers ({dtype}); save the real part as a float array")
    if not np.issubdtype(dtype, np.number):
        raise ToolkitError(f"{source} has dtype {dtype}, expected numbers")


def _npy_header(path: Path) -> None:
    """Check the declared shape of a ``.npy`` file (other files are left to ``np.load``'s errors)."""
    with open(path, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            return
        fh.seek(0)
        try:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(fh)
        except (ValueError, OSError, EOFError, SyntaxError, TokenError) as exc:  # the header is a Python literal
            raise ToolkitError(f"{path}: not a valid .npy array ({type(exc).__name__}: {exc}); write it again with "
                               "np.save") from None
    check_array_bytes(shape, dtype.itemsize, path)


def read_npy(path: os.PathLike | str) -> np.ndarray:
    """Load a plain numeric ``.npy`` array; pickled (object) content is refused."""
    path = input_file(path, ".npy file")
    _npy_header(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise ToolkitError(f"{path}: holds pickled (object) data, which is never loaded; "
                               "save it as a plain numeric array (np.save of a float array)") from None
        raise ToolkitError(f"{path}: not a valid .npy array ({exc})") from None
    except (OSError, EOFError) as exc:
        raise ToolkitError(f"{path}: not a valid .npy array ({exc}); write it again with np.save") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        raise ToolkitError(f"{path}: is an .npz archive, not a single .npy array")
    _real(arr.dtype, f"{path}: array")
    return arr


def read_h5_dataset(path: os.PathLike | str, name: Optional[str] = None) -> np.ndarray:
    """Read one dataset of an HDF5 file: ``name``, or the only dataset when ``name`` is None."""
    import h5py
    path = input_file(path, "HDF5 file")
    try:
        with h5py.File(path, "r") as f:
            if name is None:
                names = [k for k, v in f.items() if isinstance(v, h5py.Dataset)]
                if len(names) != 1:
                    raise ToolkitError(f"{path}: expected exactly one dataset, found {names or 'none'}; "
                                       "name the dataset to read")
                name = names[0]
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise ToolkitError(f"{path}: has no dataset '{name}' (it has: {', '.join(f.keys()) or 'nothing'})")
            dataset = f[name]
            _real(dataset.dtype, f"{path}: dataset '{name}'")
            check_array_bytes(dataset.shape, dataset.dtype.itemsize, f"{path}: dataset '{name}'")
            arr = dataset[()]
    except H5_ERRORS as exc:
        raise ToolkitError(f"{path}: not a readable HDF5 file ({_first_line(exc)})") from None
    return np.asarray(arr)


def read_mat_variables(path: os.PathLike | str) -> Dict[str, np.ndarray]:
    """Numeric variables of a MATLAB ``.mat`` file; v7.3 (HDF5) files are read with h5py.

    h5py sees a v7.3 array with its dimensions reversed (MATLAB is column-major); they are
    reversed back here, so both versions give MATLAB's own dimension order. Complex variables are
    kept here and refused where one is used (``real_variable``).
    """
    path = input_file(path, ".mat file")
    import h5py
    if h5py.is_hdf5(path):
        out: Dict[str, np.ndarray] = {}
        try:
            with h5py.File(path, "r") as f:
                for key, item in f.items():
                    if isinstance(item, h5py.Dataset) and np.issubdtype(item.dtype, np.number):
                        check_array_bytes(item.shape, item.dtype.itemsize, f"{path}: variable '{key}'")
                        out[key] = np.asarray(item[()]).transpose()
        except H5_ERRORS as exc:
            raise ToolkitError(f"{path}: not a readable MATLAB v7.3 (HDF5) file ({_first_line(exc)})") from None
        return out
    import scipy.io
    from scipy.io.matlab import MatReadError
    try:
        for name, shape, _ in scipy.io.whosmat(str(path)):
            check_array_bytes(shape, 8, f"{path}: variable '{name}'")  # 8 bytes: a double, MATLAB's default
        raw = scipy.io.loadmat(str(path))
    except (MatReadError, ValueError, TypeError, OSError, NotImplementedError, EOFError) as exc:
        raise ToolkitError(f"{path}: not a readable .mat file ({exc})") from None
    return {k: np.asarray(v) for k, v in raw.items()
            if not k.startswith("__") and isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.number)}


def real_variable(variables: Dict[str, np.ndarray], name: str, path: os.PathLike | str) -> np.ndarray:
    """One variable of ``read_mat_variables``, refused if complex."""
    _real(variables[name].dtype, f"{path}: variable '{name}'")
    return variables[name]
