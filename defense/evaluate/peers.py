"""Image-domain peer defences: median smoothing, JPEG compression, bit-depth reduction, pixel deflection.

The defence paper compares its feature-domain FRUs with image-domain preprocessing
(Borkar, Heide, Karam, CVPR 2020); these are the classic ones (median filter and bit-depth
reduction: Xu et al., "Feature Squeezing", NDSS 2018; JPEG: Dziugaite et al. 2016, Das et
al. 2017); pixel deflection (Prakash et al., CVPR 2018) is one of the competitors the paper
names (its steps: ``deflection``). Each works on the toolkit's layout, ``(N, C, H, W)``
float32 pixel units [0, 255] (BGR), and runs *before* mean subtraction, so it composes with
any ``CaffeClassifier``.
The small base class follows ART's ``Preprocessor``: parameters checked at construction,
``__call__(x) -> x``. ``make_peer`` reads the spec strings of the command lines
(``median:3``, ``pd:deflections=200,window=10``).
"""
from __future__ import annotations

import abc
import argparse
import io
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..core import ToolkitError
from . import deflection


class Preprocessor(abc.ABC):
    """An image transformation applied before the network, numpy in, numpy out."""

    params: Tuple[str, ...] = ()
    param_types: Dict[str, type] = {}  # how make_peer reads each parameter (int where not listed)

    def __init__(self, **kwargs):
        for name, value in kwargs.items():
            setattr(self, name, value)
        self._check_params()

    @abc.abstractmethod
    def _check_params(self) -> None:
        ...

    @abc.abstractmethod
    def _apply(self, x: np.ndarray, classifier=None) -> np.ndarray:
        ...

    def __call__(self, x: np.ndarray, classifier=None) -> np.ndarray:
        """Transform a batch ``(N, C, H, W)`` in pixel units; returns a new float32 array.

        :param classifier: the ``CaffeClassifier`` the images go to next; the filters ignore it,
            pixel deflection takes its activation map from it.
        """
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {x.shape}")
        return self._apply(x, classifier).astype(np.float32, copy=False)

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

    def _apply(self, x: np.ndarray, classifier=None) -> np.ndarray:
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

    def _apply(self, x: np.ndarray, classifier=None) -> np.ndarray:
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

    def _apply(self, x: np.ndarray, classifier=None) -> np.ndarray:
        levels = float(2 ** self.bits - 1)
        return np.rint(np.clip(x, 0.0, 255.0) / 255.0 * levels) / levels * 255.0


class PixelDeflection(Preprocessor):
    """Pixel deflection, then soft wavelet denoising (Prakash et al., CVPR 2018).

    Each image is clipped to [0, 255] (a valid image, as the authors' loaded PNGs), deflected
    (``deflection.deflect``) where the net's activation map of its predicted class is low
    (``map="cam"``, ``deflection.activation_maps``; ``uniform``: every pixel alike, the authors'
    ``-disable_map``), then denoised with BayesShrink (``deflection.wavelet_denoise``).
    ``deflections`` and ``window`` default (``None``) to the authors' ImageNet values (200, 10 on
    224 x 224) scaled to the image (``deflection.scaled_defaults``); ``sigma`` is on the [0, 1]
    scale (theirs: 0.04). Each image draws from its own generator, made from ``seed`` and its
    pixels (``deflection.image_rng``), so the result does not depend on the batch.
    """

    key = "pd"
    params = ("deflections", "window", "sigma", "map", "seed")
    param_types = {"deflections": int, "window": int, "sigma": float, "map": str, "seed": int}
    MAPS = ("cam", "uniform")

    def __init__(self, deflections: Optional[int] = None, window: Optional[int] = None,
                 sigma: float = deflection.SIGMA, map: str = "cam", seed: int = 0):
        super().__init__(deflections=deflections, window=window, sigma=sigma, map=map, seed=seed)

    def _check_params(self) -> None:
        for name in ("deflections", "window"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if not isinstance(self.sigma, (int, float, np.floating)) or not 0 < self.sigma < 1:
            raise ValueError(f"sigma must be in (0, 1) (the [0, 1] intensity scale), got {self.sigma}")
        if self.map not in self.MAPS:
            raise ValueError(f"map must be one of {', '.join(self.MAPS)}, got '{self.map}'")
        if not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2 ** 32:
            raise ValueError(f"seed must be an integer from 0 to 4294967295, got {self.seed}")

    def describe(self) -> str:
        """``pd(deflections=auto, window=auto, sigma=0.04, map=cam, seed=0)``; auto: scaled to the image."""
        values = ("auto" if getattr(self, p) is None else getattr(self, p) for p in self.params)
        return f"pd({', '.join(f'{p}={v}' for p, v in zip(self.params, values))})"

    def _apply(self, x: np.ndarray, classifier=None) -> np.ndarray:
        height, width = x.shape[2:]
        auto = deflection.scaled_defaults(height, width)
        deflections = self.deflections or auto[0]
        window = self.window or auto[1]
        if self.map == "uniform":
            keep = np.zeros((len(x), height, width))
        elif classifier is None:
            raise ValueError("pixel deflection with map=cam needs the classifier the images go to")
        else:
            keep = deflection.deflection_probability(deflection.activation_maps(classifier, x)[1], height, width)
        clipped = np.clip(x, 0.0, 255.0)
        return np.stack([
            deflection.wavelet_denoise(
                deflection.deflect(img, k, deflections, window, deflection.image_rng(self.seed, img)), self.sigma)
            for img, k in zip(clipped, keep)])


PEERS: Dict[str, Callable[..., Preprocessor]] = {
    MedianSmoothing.key: MedianSmoothing, JpegCompression.key: JpegCompression, BitDepthReduction.key: BitDepthReduction,
    PixelDeflection.key: PixelDeflection,
}


def _option_value(name: str, kind: type, text: str) -> object:
    try:
        return kind(text)
    except ValueError:
        noun = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
        raise ValueError(f"{name} must be {noun}, got '{text}'") from None


def make_peer(spec: str) -> Preprocessor:
    """``median``, ``median:5``, ``jpeg:50``, ``bits:3``, ``pd``, ``pd:deflections=200,window=10``
    -> the preprocessor (defaults for what is not given). A value without a name is the first
    parameter's; an unknown name, a repeated one or a bad value is a one-line ``ToolkitError``."""
    name, _, text = spec.partition(":")
    if name not in PEERS:
        raise ToolkitError(f"unknown peer defence '{name}'; known: {', '.join(PEERS)}")
    cls = PEERS[name]
    kwargs: Dict[str, object] = {}
    try:
        for i, item in enumerate(filter(None, text.split(","))):
            key, sep, value = item.partition("=")
            if not sep:  # a bare value is the first parameter's
                if i:
                    raise ValueError(f"'{item}' needs a name (name=value); options: {', '.join(cls.params)}")
                key, value = cls.params[0], item
            key, value = key.strip(), value.strip()
            if key not in cls.params:
                raise ValueError(f"unknown option '{key}'; options: {', '.join(cls.params)}")
            if key in kwargs:
                raise ValueError(f"option '{key}' given twice")
            kwargs[key] = _option_value(key, cls.param_types.get(key, int), value)
        return cls(**kwargs)
    except ValueError as exc:
        raise ToolkitError(f"peer defence '{spec}': {exc}") from None


def split_peer_specs(text: str) -> List[str]:
    """A comma-separated list of specs (``median:3,pd:deflections=3,window=1``) -> one string per
    defence: a ``key=value`` item without a defence name continues the spec before it."""
    specs: List[str] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        if specs and "=" in item and ":" not in item:
            specs[-1] += "," + item
        else:
            specs.append(item)
    return specs


def peer_specs(text: str) -> List[str]:
    """argparse type of ``--peers``: the specs, each checked by building it (``make_peer``)."""
    specs = split_peer_specs(text)
    for spec in specs:
        try:
            make_peer(spec)
        except ToolkitError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return specs
