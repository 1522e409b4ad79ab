"""``CaffeClassifier``: a pycaffe Net seen as a function of images in pixel space.

Input convention (the toolkit's one layout): ``(N, C, H, W)`` float32, BGR, pixel units in
[0, 255], *before* mean subtraction. Preprocessing runs in one documented order:
optional clipping to [0, 255] (``clip=True``), subtract ``mean``, multiply by ``scale``.
Gradients are returned in the same pixel space. Logits are the bottom blob of the net's
final Softmax layer (so DeepFool works on logits, not probabilities). Every array handed
back is a copy: pycaffe's blob views change at the next forward pass.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from defense.core import ToolkitError, caffe, caffe_pb2, load_net, read_net_param

log = logging.getLogger(__name__)

PIXEL_MIN, PIXEL_MAX = 0.0, 255.0


def input_spec(param: "caffe_pb2.NetParameter") -> Tuple[str, Tuple[int, ...]]:
    """(blob name, shape) of the deploy file's single image input."""
    if param.input:
        name = param.input[0]
        if param.input_shape:
            shape = tuple(param.input_shape[0].dim)
        else:
            shape = tuple(param.input_dim[:4])
        return name, shape
    for layer in param.layer:
        if layer.type == "Input":
            shape = tuple(layer.input_param.shape[0].dim) if layer.input_param.shape else ()
            return layer.top[0], shape
    raise ToolkitError("the deploy file declares no input (neither 'input:' nor an Input layer)")


def logits_blob_name(param: "caffe_pb2.NetParameter") -> str:
    """The bottom of the last Softmax layer, else the top of the last layer."""
    layers = list(param.layer)
    for layer in reversed(layers):
        if layer.type == "Softmax":
            return layer.bottom[0]
    if not layers:
        raise ToolkitError("the deploy file has no layers")
    return layers[-1].top[0]


WEIGHTED_LAYERS = ("Convolution", "Deconvolution", "InnerProduct")


def freeze_weights(param: "caffe_pb2.NetParameter") -> "caffe_pb2.NetParameter":
    """A copy with ``lr_mult: 0`` on every conv / fully connected weight and bias.

    Caffe then skips the weight gradients in the backward pass, even with ``force_backward``
    (caffe_build/patches/force-backward-keeps-frozen-params.patch; stock Caffe computes them
    all); the attacks need only the gradient w.r.t. the input.
    """
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    for layer in out.layer:
        if layer.type not in WEIGHTED_LAYERS:
            continue
        sub = layer.inner_product_param if layer.type == "InnerProduct" else layer.convolution_param
        n_blobs = 2 if sub.bias_term else 1
        while len(layer.param) < n_blobs:
            layer.param.add()
        for spec in layer.param[:n_blobs]:
            spec.lr_mult = 0.0
            spec.decay_mult = 0.0
    return out


def load_gradient_net(prototxt: os.PathLike | str, weights: os.PathLike | str | None) -> "caffe.Net":
    """``defense.core.load_net(..., force_backward=True)`` with frozen weights (``freeze_weights``).

    A classifier is used as it is, so ``weights`` must hold every parameter layer: an FRU net
    given a baseline caffemodel would otherwise run with its FRUs at their fill values.
    """
    return load_net(freeze_weights(read_net_param(prototxt)), weights, force_backward=True, source=prototxt,
                    require_all=weights is not None)


def _mean_array(mean, channels: int) -> np.ndarray:
    m = np.asarray(mean, dtype=np.float32)
    if m.ndim == 0:
        m = np.full(channels, float(m), dtype=np.float32)
    if m.ndim == 1:
        if m.size != channels:
            raise ValueError(f"mean has {m.size} values but the network takes {channels} channels")
        m = m.reshape(channels, 1, 1)
    elif m.ndim != 3 or m.shape[0] != channels:
        raise ValueError(f"mean must be a scalar, {channels} values or a ({channels},H,W) array, got shape {m.shape}")
    return m


class CaffeClassifier:
    """A caffe.Net plus its preprocessing; images in, logits / labels / input gradients out.

    :param net: a loaded ``caffe.Net`` (built with ``force_backward`` for gradients).
    :param mean: per-channel BGR mean (C values), a scalar, or a (C,H,W) mean image.
    :param input_blob: the image input blob; ``logits_blob``: the pre-softmax blob.
    :param clip: clip images to [0,255] before mean subtraction (gradients are then zero
        outside the range, the exact derivative of the clip).
    :param scale: multiplier applied after mean subtraction (1 for the published nets).
    :param batch_size: default mini-batch size of the batched methods.
    """

    def __init__(self, net, mean, input_blob: str, logits_blob: str, *, clip: bool = False,
                 scale: float = 1.0, batch_size: int = 32):
        if input_blob not in net.blobs:
            raise ToolkitError(f"the network has no input blob '{input_blob}'")
        if logits_blob not in net.blobs:
            raise ToolkitError(f"the network has no logits blob '{logits_blob}'")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        self.net = net
        self.input_blob = input_blob
        self.logits_blob = logits_blob
        self.input_shape: Tuple[int, int, int] = tuple(net.blobs[input_blob].data.shape[1:])  # type: ignore
        self.mean = _mean_array(mean, self.input_shape[0])
        self.clip = bool(clip)
        self.scale = float(scale)
        self.batch_size = int(batch_size)
        self._layer_names: List[str] = list(net._layer_names)
        self._producer = self._producers()
        self.num_classes = int(np.prod(net.blobs[logits_blob].data.shape[1:]))
        self._last_input: Optional[np.ndarray] = None

    @classmethod
    def from_files(cls, prototxt: os.PathLike | str, weights: os.PathLike | str | None, mean=None,
                   preset: Optional[str] = None, **kw) -> "CaffeClassifier":
        """Load a deploy prototxt + caffemodel (validated, ``force_backward`` set).

        :param mean: BGR mean to subtract; or give ``preset`` (a defense.presets name) for its mean.
        """
        if (mean is None) == (preset is None):
            raise ValueError("give exactly one of mean and preset")
        if preset is not None:
            from defense.presets import get_preset
            mean = get_preset(preset).mean_bgr
        param = read_net_param(prototxt)
        try:
            input_blob, _ = input_spec(param)
            logits = logits_blob_name(param)
        except ToolkitError as exc:
            raise ToolkitError(f"{prototxt}: {exc}") from None
        net = load_gradient_net(prototxt, weights)
        return cls(net, mean, input_blob, logits, **kw)

    # ------------------------------------------------------------ structure
    def _producers(self) -> Dict[str, int]:
        """Blob name -> index of the last layer that writes it (in-place layers included)."""
        out: Dict[str, int] = {}
        for i, name in enumerate(self._layer_names):
            for top in self.net.top_names[name]:
                out[top] = i
        return out

    def producer(self, blob: str) -> int:
        if blob not in self._producer:
            raise ToolkitError(f"the network has no blob '{blob}' made by a layer; blobs: {', '.join(self._producer)}")
        return self._producer[blob]

    def layer_type(self, index: int) -> str:
        return self.net.layers[index].type

    def conv_blobs(self) -> List[str]:
        """Output blobs of every Convolution layer (after their in-place layers, e.g. ReLU)."""
        seen: List[str] = []
        for i, name in enumerate(self._layer_names):
            if self.net.layers[i].type == "Convolution":
                top = self.net.top_names[name][0]
                if top not in seen:
                    seen.append(top)
        return seen

    @property
    def caffe_classifier(self) -> "CaffeClassifier":
        """The Caffe classifier that computes gradients and inner blobs: itself (an
        ``attacks.runtime.OnnxClassifier`` answers with its Caffe reference)."""
        return self

    def last_feature_map(self) -> Optional[str]:
        """The last convolutional feature map before the logits (for class activation maps): the
        last 4-D blob with more than one position that a layer other than the input, a pooling or
        Caffe's Split writes before the logits' layer; None if there is none."""
        found = None
        for i, name in enumerate(self._layer_names[:self.producer(self.logits_blob)]):
            if self.layer_type(i) in ("Input", "Pooling", "Split"):
                continue
            for top in self.net.top_names[name]:
                shape = self.net.blobs[top].data.shape
                if len(shape) == 4 and shape[2] * shape[3] > 1:
                    found = top
        return found

    # ------------------------------------------------------------ one batch
    def _check_x(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"images must have shape (N, {', '.join(map(str, self.input_shape))}), got {x.shape}")
        return x

    def preprocess(self, x: np.ndarray) -> np.ndarray:
        x = np.clip(x, PIXEL_MIN, PIXEL_MAX) if self.clip else x
        out = (x - self.mean)
        return out * self.scale if self.scale != 1.0 else out

    def _load(self, x: np.ndarray) -> None:
        blob = self.net.blobs[self.input_blob]
        if blob.data.shape[0] != x.shape[0]:
            blob.reshape(x.shape[0], *self.input_shape)
            self.net.reshape()
        blob.data[...] = self.preprocess(x)

    def forward_batch(self, x: np.ndarray, blobs: Sequence[str] = ()) -> Dict[str, np.ndarray]:
        """Forward one batch (as given, no splitting) up to what ``blobs`` need; copies.

        The net keeps this batch's state, so ``backward_batch`` can follow.
        """
        x = self._check_x(x)
        names = list(blobs) or [self.logits_blob]
        end = max(self.producer(b) for b in names)
        self._load(x)
        self.net._forward(0, end)
        self._last_input = x
        self._last_end = end
        return {b: self.net.blobs[b].data.copy() for b in names}

    def backward_batch(self, blob_diffs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Input gradient of sum_b <blob_diffs[b], blob b> for the batch last forwarded.

        Several blobs are handled by running the backward pass in segments and adding
        each blob's diff when the pass reaches its producer (Caffe's layers overwrite,
        not add, their bottom diffs).
        """
        if self._last_input is None:
            raise RuntimeError("backward_batch needs a forward_batch first")
        order = sorted(((self.producer(b), b) for b in blob_diffs), reverse=True)
        if order[0][0] > self._last_end:
            raise RuntimeError("backward_batch asks for a blob beyond the last forward pass")
        if len(order) > 1:
            for i in range(order[0][0] + 1):
                for top in self.net.top_names[self._layer_names[i]]:
                    self.net.blobs[top].diff[...] = 0
        for k, (start, blob) in enumerate(order):
            diff = np.asarray(blob_diffs[blob], dtype=np.float32)
            target = self.net.blobs[blob].diff
            if diff.shape != target.shape:
                raise ValueError(f"diff for blob '{blob}' has shape {diff.shape}, the blob {target.shape}")
            if len(order) > 1:
                target += diff
            else:
                target[...] = diff
            stop = order[k + 1][0] + 1 if k + 1 < len(order) else 0
            if stop <= start:
                self.net._backward(start, stop)
        grad = self.net.blobs[self.input_blob].diff.copy()
        if self.scale != 1.0:
            grad *= self.scale
        if self.clip:
            x = self._last_input
            grad *= ((x >= PIXEL_MIN) & (x <= PIXEL_MAX))
        return grad

    # ------------------------------------------------------------ batched API
    def _batches(self, n: int, batch_size: Optional[int]):
        b = int(batch_size or self.batch_size)
        if b < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        for s in range(0, n, b):
            yield slice(s, min(n, s + b))

    def blob_values(self, x: np.ndarray, blobs: Sequence[str], batch_size: Optional[int] = None,
                    perturbation: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
        """Copies of ``blobs`` for images ``x`` (+ ``perturbation``, added batch by batch)."""
        x = self._check_x(x)
        parts: Dict[str, List[np.ndarray]] = {b: [] for b in blobs}
        for s in self._batches(len(x), batch_size):
            xb = x[s] if perturbation is None else x[s] + perturbation
            for b, v in self.forward_batch(xb, blobs).items():
                parts[b].append(v)
        return {b: np.concatenate(v) for b, v in parts.items()}

    def logits(self, x: np.ndarray, batch_size: Optional[int] = None,
               perturbation: Optional[np.ndarray] = None) -> np.ndarray:
        """Pre-softmax scores of x (+ perturbation), shape (N, classes)."""
        v = self.blob_values(x, [self.logits_blob], batch_size, perturbation)[self.logits_blob]
        return v.reshape(len(v), -1)

    def predict(self, x: np.ndarray, batch_size: Optional[int] = None,
                perturbation: Optional[np.ndarray] = None) -> np.ndarray:
        """Class probabilities (softmax of the logits), shape (N, classes)."""
        return softmax(self.logits(x, batch_size, perturbation))

    def labels(self, x: np.ndarray, batch_size: Optional[int] = None,
               perturbation: Optional[np.ndarray] = None) -> np.ndarray:
        """Top-1 class per image of x (+ perturbation)."""
        return self.logits(x, batch_size, perturbation).argmax(axis=1)

    def logit_gradients(self, x: np.ndarray, weights: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """For one batch: logits and the input gradients of ``weights[:, m] . logits`` for each m.

        :param weights: (N, M, classes); one forward and M backward passes.
        :returns: logits (N, classes), gradients (N, M, C, H, W).
        """
        x = self._check_x(x)
        weights = np.asarray(weights, dtype=np.float32)
        if weights.ndim != 3 or weights.shape[0] != len(x) or weights.shape[2] != self.num_classes:
            raise ValueError(f"weights must have shape (N, M, {self.num_classes}), got {weights.shape}")
        logits = self.forward_batch(x)[self.logits_blob]
        shape = logits.shape
        grads = np.empty((len(x), weights.shape[1]) + self.input_shape, dtype=np.float32)
        for m in range(weights.shape[1]):
            grads[:, m] = self.backward_batch({self.logits_blob: weights[:, m].reshape(shape)})
        return logits.reshape(len(x), -1), grads

    def top_class_gradient(self, x: np.ndarray, blob: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For one batch, one forward and one backward pass: each image's top-1 class, the values
        of ``blob`` and the gradient of the top-1 logit w.r.t. them (class activation maps).

        The gradient is w.r.t. the blob as the layers above its producer read it, i.e. after its
        in-place layers (a ReLU): the backward pass stops there.
        :returns: labels (N,), values and gradients (the blob's shape).
        """
        values = self.forward_batch(x, [blob, self.logits_blob])
        logits = values[self.logits_blob].reshape(len(x), -1)
        labels = logits.argmax(axis=1)
        diff = self.net.blobs[self.logits_blob].diff
        diff[...] = 0.0
        diff.reshape(len(x), -1)[np.arange(len(x)), labels] = 1.0
        start, stop = self.producer(self.logits_blob), self.producer(blob) + 1
        if stop <= start:
            self.net._backward(start, stop)
        return labels, values[blob], self.net.blobs[blob].diff.copy()

    def class_gradients(self, x: np.ndarray, classes: np.ndarray, batch_size: Optional[int] = None) -> np.ndarray:
        """Input gradients of the logits ``classes[i, m]`` of image i: (N, M, C, H, W)."""
        x = self._check_x(x)
        classes = np.asarray(classes)
        if classes.ndim == 1:
            classes = classes[:, None]
        out = np.empty((len(x), classes.shape[1]) + self.input_shape, dtype=np.float32)
        for s in self._batches(len(x), batch_size):
            c = classes[s]
            w = np.zeros(c.shape + (self.num_classes,), dtype=np.float32)
            np.put_along_axis(w, c[..., None], 1.0, axis=2)
            out[s] = self.logit_gradients(x[s], w)[1]
        return out

    def loss_gradient(self, x: np.ndarray, labels: np.ndarray, batch_size: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Per-image softmax cross-entropy w.r.t. ``labels`` and its input gradient."""
        x = self._check_x(x)
        labels = np.asarray(labels, dtype=np.int64)
        losses = np.empty(len(x), dtype=np.float64)
        grads = np.empty_like(x, dtype=np.float32)
        for s in self._batches(len(x), batch_size):
            logits = self.forward_batch(x[s])[self.logits_blob]
            z = logits.reshape(len(logits), -1)
            p = softmax(z)
            idx = np.arange(len(z))
            losses[s] = -np.log(np.maximum(p[idx, labels[s]], 1e-30))
            d = p.copy()
            d[idx, labels[s]] -= 1.0
            grads[s] = self.backward_batch({self.logits_blob: d.reshape(logits.shape)})
        return losses, grads

    def input_gradient(self, x: np.ndarray, blob_diffs: Mapping[str, np.ndarray],
                       batch_size: Optional[int] = None) -> np.ndarray:
        """Input gradient of sum_b <blob_diffs[b], blob b(x)>; diffs are per image (first axis N)."""
        x = self._check_x(x)
        grads = np.empty_like(x, dtype=np.float32)
        for s in self._batches(len(x), batch_size):
            self.forward_batch(x[s], list(blob_diffs))
            grads[s] = self.backward_batch({b: d[s] for b, d in blob_diffs.items()})
        return grads


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
