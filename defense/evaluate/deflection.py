"""The three steps of pixel deflection (Prakash et al., CVPR 2018, "Deflecting Adversarial
Attacks with Pixel Deflection"; authors' code: github.com/iamaaditya/pixel-deflection), as
pure functions on one image; ``peers.PixelDeflection`` chains them over a batch.

1. ``activation_maps``: where the network looks. The map of the predicted class is
   ``sum_k alpha_k A_k`` over the channels ``A_k`` of the last convolutional feature map, with
   ``alpha_k`` the spatial mean of the class score's gradient w.r.t. ``A_k``. On a head that is
   a global average pool and one linear layer (GoogLeNet, ResNet152) that gradient is
   ``W[c, k] / (h w)`` everywhere, so the map is exactly the class activation map (CAM, Zhou et
   al. 2016) up to that constant. Nets with fully connected layers on a spatial map (CaffeNet,
   VGG_F, VGG16, FashionNet) have no CAM; there the same formula is Grad-CAM's weighting
   (Selvaraju et al. 2017). Grad-CAM's final ReLU is left out so that the two coincide.
2. ``deflection_probability``: the map upsampled (bilinear) to the image and min-max
   normalised to [0, 1] (the authors normalise their map the same way); a pixel is deflected
   with probability ``1 - map``, so the least relevant pixels are deflected most often.
3. ``deflect``: the authors' loop; ``wavelet_denoise``: scikit-image's BayesShrink, soft.
"""
from __future__ import annotations

import hashlib
from typing import Tuple

import numpy as np

from ..core import ToolkitError

# the authors' defaults for 224 x 224 ImageNet images (main.py), sigma on the [0, 1] scale
IMAGENET_SIDE = 224
IMAGENET_DEFLECTIONS = 200
IMAGENET_WINDOW = 10
SIGMA = 0.04


def scaled_defaults(height: int, width: int) -> Tuple[int, int]:
    """(deflections, window) for an image of ``height`` x ``width``: the authors' ImageNet values
    scaled with the image, deflections by the pixel count (the same share of pixels is deflected)
    and the window by the side (the same share of the image); at least 1 each. 224 x 224 gives
    (200, 10); 28 x 28 (FashionNet) gives (3, 1)."""
    deflections = max(1, int(round(IMAGENET_DEFLECTIONS * height * width / IMAGENET_SIDE ** 2)))
    window = max(1, int(round(IMAGENET_WINDOW * np.sqrt(height * width) / IMAGENET_SIDE)))
    return deflections, window


def image_rng(seed: int, image: np.ndarray) -> np.random.Generator:
    """The generator for one image: from ``seed`` and the image's bytes, so an image is deflected
    the same way whatever batch, order or worker process it comes in (evaluations resume and split)."""
    digest = hashlib.sha256(np.ascontiguousarray(image, dtype=np.float32).tobytes()).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


def feature_blob(classifier) -> str:
    """The blob the activation map is made from (``CaffeClassifier.last_feature_map``)."""
    found = classifier.last_feature_map()
    if found is None:
        raise ToolkitError("pixel deflection's activation map needs a convolutional feature map before the "
                           "logits; this net has none (use map=uniform)")
    return found


def activation_maps(classifier, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The predicted classes of ``x`` and their maps ``sum_k alpha_k A_k`` at the feature map's
    resolution (module docstring): ``(N,)`` labels, ``(N, h, w)`` maps."""
    labels, values, grads = classifier.top_class_gradient(x, feature_blob(classifier))
    alpha = grads.mean(axis=(2, 3))
    return labels, np.einsum("nk,nkhw->nhw", alpha, values)


def deflection_probability(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(N, h, w)`` maps -> ``(N, height, width)`` in [0, 1]: bilinear upsampling (scikit-image),
    then min-max normalisation per image; a constant map becomes 0 (uniform deflection)."""
    from skimage.transform import resize

    out = np.empty((len(maps), height, width), dtype=np.float64)
    for i, m in enumerate(np.asarray(maps, dtype=np.float64)):
        up = resize(m, (height, width), order=1, mode="edge", anti_aliasing=False)
        span = up.max() - up.min()
        out[i] = (up - up.min()) / span if span > 0 else 0.0
    return out


def deflect(image: np.ndarray, keep: np.ndarray, deflections: int, window: int, rng) -> np.ndarray:
    """Pixel deflection of one ``(C, H, W)`` image (a new array), as the authors' ``pixel_deflection``.

    Channels are visited in turn; each visit draws a position (row, column) uniformly and skips
    it with probability ``keep[row, col]``; otherwise it draws an offset (da, db) uniformly from
    ``[-window, window]^2`` until the source lies inside the image and copies that pixel of the
    channel (earlier deflections included) onto the position. It stops after exactly
    ``deflections`` copies. The draws, in order: ``rng.integers(H)``, ``rng.integers(W)``,
    ``rng.random()``, then ``rng.integers(-window, window + 1)`` twice per offset try.

    Differences from the authors' loop, both deliberate: the first row and column can be sources
    (their test ``x + a > 0`` excludes them), and the count stops at ``deflections`` (theirs
    finishes the round of channels).
    """
    out = np.array(image, dtype=np.float32, copy=True)
    channels, height, width = out.shape
    if deflections > 0 and float(np.min(keep)) >= 1.0:
        raise ValueError("the deflection map keeps every pixel; at least one must be below 1")
    done, c = 0, 0
    while done < deflections:
        row, col = int(rng.integers(height)), int(rng.integers(width))
        if rng.random() >= keep[row, col]:
            while True:
                da, db = int(rng.integers(-window, window + 1)), int(rng.integers(-window, window + 1))
                if 0 <= row + da < height and 0 <= col + db < width:
                    break
            out[c, row, col] = out[c, row + da, col + db]
            done += 1
        c = (c + 1) % channels
    return out


def wavelet_denoise(image: np.ndarray, sigma: float) -> np.ndarray:
    """Soft BayesShrink wavelet denoising of one ``(C, H, W)`` pixel-unit image (BGR), as the
    authors call scikit-image: on the [0, 1] scale, colour images in YCbCr; back in pixel units."""
    from skimage.restoration import denoise_wavelet

    x = np.clip(np.asarray(image, dtype=np.float64) / 255.0, 0.0, 1.0)
    if x.shape[0] == 1:
        out = denoise_wavelet(x[0], sigma=sigma, mode="soft", method="BayesShrink")[None]
    else:
        rgb = x[::-1].transpose(1, 2, 0)
        out = denoise_wavelet(rgb, sigma=sigma, mode="soft", method="BayesShrink", channel_axis=-1,
                              convert2ycbcr=x.shape[0] == 3).transpose(2, 0, 1)[::-1]
    return (out * 255.0).astype(np.float32)
