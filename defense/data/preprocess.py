"""The published ImageNet preprocessing, in one documented order.

What the paper's evaluation scripts (``samenorm_ilsvrc_eval.py``, ``defense_example.py``)
do to every image, and therefore what this module does:

1. ``Image.open(path).convert("RGB")`` (Pillow);
2. resize with Pillow's ``Image.resize`` and its *default* filter. The scripts are Python 2
   (``print`` statements), so they ran Pillow <= 6.2, whose default filter is NEAREST
   (Pillow 7.0 dropped Python 2 and made BICUBIC the default). We therefore pass NEAREST
   explicitly; ``resample=`` offers the smoother filters for other experiments.
   - ``squash`` (CaffeNet, GoogLeNet): to 256 x 256, aspect ratio not kept;
   - ``shorter`` (VGG-F, VGG16, ResNet152): shorter side to 256 and the longer one to
     ``256 * long // short`` (integer division, as published);
3. HWC uint8 -> CHW, RGB -> BGR, float32 in [0, 255];
4. centre crop 224: rows ``(H - 224) // 2 ...``, columns ``(W - 224) // 2 ...``;
5. add the perturbation (pixel units, BGR, (3, 224, 224)), optionally clip to [0, 255]
   (the table scripts do not clip; the single-image demo does);
6. subtract the preset's BGR mean, just before the forward pass: that step belongs to the
   classifier (``attacks.classifier.CaffeClassifier.preprocess``), not to this module.

Steps 1-5 give the canonical pixel-space batch every data source yields.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core import ToolkitError, input_file
from ..presets import NetPreset

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,   # the published scripts (Pillow <= 6 default)
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,   # Pillow >= 7 default
    "lanczos": Image.Resampling.LANCZOS,
}
PUBLISHED_RESAMPLE = "nearest"

ImageInput = Union[str, os.PathLike, Image.Image]


def load_image(path: os.PathLike | str) -> Image.Image:
    """Open and fully decode an image as RGB; a bad file is a one-line ToolkitError naming it.

    An image over Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) is refused from
    its header, before its pixels are allocated (Pillow only warns up to twice the limit)."""
    path = input_file(path, "image", "check the path or rebuild the index")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # decode now: truncated JPEGs fail here, not later in a batch
                return img.convert("RGB")
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ToolkitError(f"{path}: image too large to decode safely ({exc}); "
                           f"use an image under {Image.MAX_IMAGE_PIXELS} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ToolkitError(f"{path}: not a readable image ({reason}); replace it or remove it from the index") from None


def resized_size(width: int, height: int, mode: str, size: int) -> Tuple[int, int]:
    """(width, height) after the published resize rule ``mode`` (see the module docstring)."""
    if mode == "squash":
        return size, size
    if mode == "shorter":
        return (size * width // height, size) if width >= height else (size, size * height // width)
    if mode == "none":
        return width, height
    raise ValueError(f"resize mode must be 'squash', 'shorter' or 'none', got '{mode}'")


def resize(img: Image.Image, mode: str, size: int = 256, resample: str = PUBLISHED_RESAMPLE,
           source: os.PathLike | str = "image") -> Image.Image:
    """The published resize; the size it gives is checked before Pillow allocates it.

    Resizing by the shorter side multiplies an extreme aspect ratio (1 x 20000 becomes
    256 x 5120000, about 15 GiB once a float batch), so a result over Pillow's own pixel
    limit is refused naming ``source``."""
    if resample not in RESAMPLE:
        raise ValueError(f"resample must be one of {', '.join(RESAMPLE)}, got '{resample}'")
    new = resized_size(img.width, img.height, mode, size)
    if new[0] * new[1] > Image.MAX_IMAGE_PIXELS:
        raise ToolkitError(f"{source}: image of {img.width}x{img.height} pixels would be {new[0]}x{new[1]} after "
                           f"the '{mode}' resize, over {Image.MAX_IMAGE_PIXELS} pixels; crop it to a usual aspect ratio")
    return img if new == img.size else img.resize(new, RESAMPLE[resample])


def center_crop(chw: np.ndarray, crop: int) -> np.ndarray:
    """The published centre crop: offset ``(H - crop) // 2`` rows and ``(W - crop) // 2`` columns."""
    _, h, w = chw.shape
    if h < crop or w < crop:
        raise ValueError(f"image of {h}x{w} is smaller than the {crop}x{crop} crop")
    top, left = (h - crop) // 2, (w - crop) // 2
    return chw[:, top:top + crop, left:left + crop]


def to_bgr_chw(img: Image.Image) -> np.ndarray:
    """RGB Pillow image -> float32 (3, H, W) BGR array in [0, 255]."""
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)[::-1]).astype(np.float32)


def preprocess(image: ImageInput, preset: NetPreset, perturbation: Optional[np.ndarray] = None,
               clip: bool = False, resample: str = PUBLISHED_RESAMPLE) -> np.ndarray:
    """Steps 1-5 of the module docstring: a (3, crop, crop) float32 BGR array in pixel units.

    :param image: a file path or an already opened Pillow image.
    :param perturbation: (3, crop, crop) BGR perturbation in pixel units, added after the crop.
    :param clip: clip the perturbed image to [0, 255] (the published demo does, the tables do not).
    """
    img = load_image(image) if not isinstance(image, Image.Image) else image.convert("RGB")
    source = image if not isinstance(image, Image.Image) else "image"
    x = center_crop(to_bgr_chw(resize(img, preset.resize, preset.resize_to, resample, source)), preset.input_size)
    if perturbation is not None:
        x = add_perturbation(x, perturbation, clip=clip)
    return x


def add_perturbation(x: np.ndarray, perturbation: np.ndarray, clip: bool = False) -> np.ndarray:
    """``x + perturbation`` in pixel units (broadcast over a batch), optionally clipped to [0, 255]."""
    perturbation = np.asarray(perturbation, dtype=np.float32)
    if perturbation.shape != x.shape[-3:]:
        raise ValueError(f"perturbation shape {perturbation.shape} does not match the image shape {x.shape[-3:]}")
    out = x + perturbation
    return np.clip(out, 0.0, 255.0, out=out) if clip else out

