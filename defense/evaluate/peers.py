"""Image-domain peer defences: median smoothing, JPEG compression, bit-depth reduction.

The defence paper compares its feature-domain FRUs with image-domain preprocessing
(Borkar, Heide, Karam, CVPR 2020); these are the classic ones (median filter and bit-depth
reduction: Xu et al., "Feature Squeezing", NDSS 2018; JPEG: Dziugaite et al. 2016, Das et
al. 2017). Each works on the toolkit's layout, ``(N, C, H, W)`` float32 pixel units [0, 255]
(BGR), and runs *before* mean subtraction, so it composes with any ``CaffeClassifier``.
The small base class follows ART's ``Preprocessor``: parameters checked at construction,
``__call__(x) -> x``.
"""
from __future__ import annotations

import abc
import io
from typing import Callable, Dict, Tuple

import numpy as np

from ..core import ToolkitError


class Preprocessor(abc.ABC):
    """An image transformation applied before the network, numpy in, numpy out."""

    params: Tuple[str, ...] = ()

    def __init__(self, **kwargs):
        for name, value in kwargs.items():
            setattr(self, name, value)
        self._check_params()

    @abc.abstractmethod
    def _check_params(self) -> None:
        ...

    @abc.abstractmethod
    def _apply(self, x: np.ndarray) -> np.ndarray:
        ...

    def check_images(self, shape: Tuple[int, ...]) -> None:  # noqa: B027 - optional override
        """Raise ValueError if images of ``(C, H, W)`` ``shape`` do not suit the parameters (called
        by ``__call__``, and by a command before it starts, so the refusal comes before any work)."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Transform a batch ``(N, C, H, W)`` in pixel units; returns a new float32 array."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {x.shape}")
        self.check_images(x.shape[1:])
        return self._apply(x).astype(np.float32, copy=False)

    def describe(self) -> str:
        """Short name with parameters, e.g. ``median(3)``, for reports."""
        return f"{type(self).key}({', '.join(str(getattr(self, p)) for p in self.params)})"

    key = "preprocessor"


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


class MedianSmoothing(Preprocessor):
    """Median filter over a ``window_size`` x ``window_size`` window, each channel separately.

    Borders are reflected (``scipy.ndimage`` mode ``reflect``), as in ART's SpatialSmoothing.
    """

    key = "median"
    params = ("window_size",)

    def __init__(self, window_size: int = 3):
        super().__init__(window_size=window_size)

    def _check_params(self) -> None:
        if not isinstance(self.window_size, (int, np.integer)) or self.window_size < 1:
            raise ValueError(f"window_size must be a positive integer, got {self.window_size}")

    def check_images(self, shape: Tuple[int, ...]) -> None:
        if self.window_size > min(shape[-2:]):  # a window past the image only costs time (a huge one, hours)
            raise ValueError(f"peer defence median:{self.window_size}: the window is larger than the "
                             f"{shape[-2]}x{shape[-1]} images; use at most {min(shape[-2:])}")

    def _apply(self, x: np.ndarray) -> np.ndarray:
        from scipy.ndimage import median_filter
        return median_filter(x, size=(1, 1, self.window_size, self.window_size), mode="reflect")


class JpegCompression(Preprocessor):
    """Round-trip through JPEG at ``quality`` (Pillow); images are rounded and clipped to uint8 first.

    Three channels are taken as BGR and encoded as RGB (colour JPEG); one channel as greyscale.
    """

    key = "jpeg"
    params = ("quality",)

    def __init__(self, quality: int = 75):
        super().__init__(quality=quality)

    def _check_params(self) -> None:
        if not isinstance(self.quality, (int, np.integer)) or not 1 <= self.quality <= 95:
            raise ValueError(f"quality must be an integer in [1, 95], got {self.quality}")

    def _apply(self, x: np.ndarray) -> np.ndarray:
        from PIL import Image

        if x.shape[1] not in (1, 3):
            raise ValueError(f"JPEG needs 1 or 3 channels, got {x.shape[1]}")
        out = np.empty_like(x)
        for i, img in enumerate(_to_uint8(x)):
            hwc = img[::-1].transpose(1, 2, 0) if img.shape[0] == 3 else img[0]
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(hwc)).save(buf, format="JPEG", quality=int(self.quality))
            buf.seek(0)
            dec = np.asarray(Image.open(buf), dtype=np.float32)
            out[i] = dec.transpose(2, 0, 1)[::-1] if img.shape[0] == 3 else dec[None]
        return out


class BitDepthReduction(Preprocessor):
    """Quantise each pixel to ``bits`` bits: ``round(x / 255 * (2^b - 1)) / (2^b - 1) * 255`` (clipped)."""

    key = "bits"
    params = ("bits",)

    def __init__(self, bits: int = 4):
        super().__init__(bits=bits)

    def _check_params(self) -> None:
        if not isinstance(self.bits, (int, np.integer)) or not 1 <= self.bits <= 8:
            raise ValueError(f"bits must be an integer in [1, 8], got {self.bits}")

    def _apply(self, x: np.ndarray) -> np.ndarray:
        levels = float(2 ** self.bits - 1)
        return np.rint(np.clip(x, 0.0, 255.0) / 255.0 * levels) / levels * 255.0


PEERS: Dict[str, Callable[..., Preprocessor]] = {
    MedianSmoothing.key: MedianSmoothing, JpegCompression.key: JpegCompression, BitDepthReduction.key: BitDepthReduction,
}


def make_peer(spec: str) -> Preprocessor:
    """``median``, ``median:5``, ``jpeg:50``, ``bits:3`` -> the preprocessor (default parameter if none)."""
    name, _, value = spec.partition(":")
    if name not in PEERS:
        raise ToolkitError(f"unknown peer defence '{name}'; known: {', '.join(PEERS)}")
    if not value:
        return PEERS[name]()
    try:
        return PEERS[name](int(value))
    except ValueError as exc:
        raise ToolkitError(f"peer defence '{spec}': {exc}") from None
