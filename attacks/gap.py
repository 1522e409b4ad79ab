"""GAP: Generative Adversarial Perturbations (Poursaeed, Katsman, Gao, Belongie, CVPR 2018),
the universal non-targeted variant.

A ResNet generator (Johnson et al.'s, as in GAP's code: 7x7 conv, two stride-2 convs, residual
blocks, two stride-2 up-convolutions, 7x7 conv, tanh; BatchNorm with batch statistics) maps a
fixed noise pattern, uniform in [0, 255], to u; v = u xi / ||u||_p is added to every image of a
batch and the generator is trained through the frozen classifier. Loss (``loss``):
``clean`` (default) - the mean log probability of the clean class, minimised (pushes images away
from their clean prediction directly); ``least_likely`` - log of the cross-entropy towards each
image's least likely clean class, minimised (GAP's released code for the non-targeted case). On
the tiny Fashion-MNIST test net, 60 iterations at xi 50 fool 0.88 of held-out images with
``clean`` and 0.23 with ``least_likely``.

Caffe has no reflection padding (zero padding here) and no ``output_padding``: the
up-convolutions are 4x4 with stride 2 and pad 1 (exact doubling). Inputs of at least 128 pixels
get the paper's shape (64 filters, 6 blocks); smaller ones (Fashion-MNIST's 28) 16 filters and
3 blocks. BatchNorm uses batch statistics, in training and for the final v alike: with one fixed
input the product is exactly what the last iteration optimised.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from defense.core import L, P, caffe

from .classifier import softmax
from .generative import GenerativeAttack, net_blob

LOSSES = ("clean", "least_likely")
PAPER_SIZE = (64, 6)  # (filters, residual blocks) of GAP's ResnetGenerator
SMALL_SIZE = (16, 3)  # for inputs under PAPER_MIN_INPUT pixels
PAPER_MIN_INPUT = 128
NOISE_STREAM = 4099


def gap_loss(logits: np.ndarray, targets: np.ndarray, kind: str) -> Tuple[float, np.ndarray]:
    """GAP's loss of a batch and its gradient w.r.t. the logits.

    :param kind: ``least_likely``: log(mean_i -log p_i[t_i]) (t: least likely clean class);
        ``clean``: mean_i log p_i[t_i] (t: the clean class).
    """
    z = np.asarray(logits, np.float64)
    n = len(z)
    p = softmax(z)
    onehot = np.zeros_like(p)
    onehot[np.arange(n), targets] = 1.0
    logp = np.log(np.maximum(p[np.arange(n), targets], 1e-300))
    if kind == "least_likely":
        ce = -logp.mean()
        return float(np.log(ce)), (p - onehot) / (n * ce)
    if kind == "clean":
        return float(logp.mean()), (onehot - p) / n
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {kind!r}")


class GAP(GenerativeAttack):
    """:param ngf: the generator's first filter count (None: 64 from 128 pixels up, else 16).
    :param blocks: residual blocks (None: 6 from 128 pixels up, else 3).
    :param loss: ``clean`` or ``least_likely`` (GAP's code).
    """

    name = "gap"
    attack_params = GenerativeAttack.common_params + ("ngf", "blocks", "loss")
    input_blob = "noise"

    def __init__(self, classifier, norm: str = "inf", xi: Optional[float] = None, max_iter: int = 200,
                 batch_size: int = 32, lr: float = 0.002, beta1: float = 0.5, ngf: Optional[int] = None,
                 blocks: Optional[int] = None, loss: str = "clean", snapshot_dir=None,
                 snapshot_every: int = 0, resume=None, verbose: bool = True):
        super().__init__(classifier, norm=norm, xi=xi, max_iter=max_iter, batch_size=batch_size, lr=lr, beta1=beta1,
                         ngf=ngf, blocks=blocks, loss=loss, snapshot_dir=snapshot_dir, snapshot_every=snapshot_every,
                         resume=resume, verbose=verbose)

    def _check_params(self) -> None:
        self._check_common()
        small = min(self.classifier.input_shape[1:]) < PAPER_MIN_INPUT
        default_ngf, default_blocks = SMALL_SIZE if small else PAPER_SIZE
        self.ngf = self._positive_int("ngf", default_ngf if self.ngf is None else self.ngf)
        self.blocks = self._positive_int("blocks", default_blocks if self.blocks is None else self.blocks)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")

    # ------------------------------------------------------------ the ResNet generator
    def _conv(self, n, name: str, bottom, num: int, kernel: int, stride: int = 1, relu: bool = True,
              deconv: bool = False):
        """conv (or 4x4 stride-2 up-conv), BatchNorm (batch statistics), Scale, [ReLU]."""
        if deconv:
            top = net_blob(n, name, L.Deconvolution(bottom, name=name, convolution_param=dict(
                num_output=num, kernel_size=4, stride=2, pad=1, bias_term=False)))
        else:
            top = net_blob(n, name, L.Convolution(bottom, name=name, num_output=num, kernel_size=kernel,
                                                   stride=stride, pad=kernel // 2, bias_term=False))
        net_blob(n, f"{name}_bn", L.BatchNorm(top, name=f"{name}_bn", use_global_stats=False, in_place=True))
        net_blob(n, f"{name}_scale", L.Scale(top, name=f"{name}_scale", bias_term=True, in_place=True))
        if relu:
            net_blob(n, f"{name}_relu", L.ReLU(top, name=f"{name}_relu", in_place=True))
        return top

    def _build(self, n: "caffe.NetSpec"):
        c, h, w = self.classifier.input_shape
        noise = net_blob(n, self.input_blob, L.Input(name=self.input_blob, shape=dict(dim=[1, c, h, w])))
        x = self._conv(n, "g_conv0", noise, self.ngf, 7)
        x = self._conv(n, "g_down1", x, 2 * self.ngf, 3, stride=2)
        x = self._conv(n, "g_down2", x, 4 * self.ngf, 3, stride=2)
        for b in range(1, self.blocks + 1):
            y = self._conv(n, f"g_res{b}a", x, 4 * self.ngf, 3)
            y = self._conv(n, f"g_res{b}b", y, 4 * self.ngf, 3, relu=False)
            x = net_blob(n, f"g_res{b}", L.Eltwise(x, y, name=f"g_res{b}", operation=P.Eltwise.SUM))
        x = self._conv(n, "g_up1", x, 2 * self.ngf, 4, deconv=True)
        x = self._conv(n, "g_up2", x, self.ngf, 4, deconv=True)
        x = net_blob(n, "g_out", L.Convolution(x, name="g_out", num_output=c, kernel_size=7, pad=3))
        made = (4 * math.ceil(math.ceil(h / 2) / 2), 4 * math.ceil(math.ceil(w / 2) / 2))
        x = self._crop(n, x, made, noise)
        return net_blob(n, "generated", L.TanH(x, name="generated")), 1

    # ------------------------------------------------------------ the attack
    def _noise(self, seed: int) -> np.ndarray:
        """The fixed input pattern, uniform in [0, 255] as in GAP's code."""
        shape = (1, *self.classifier.input_shape)
        return np.random.default_rng([seed, NOISE_STREAM]).uniform(0, 255, shape).astype(np.float32)

    def _generator_input(self, seed: int, rng: np.random.Generator) -> np.ndarray:
        return self._noise(seed)

    def _targets(self, clean_logits: np.ndarray) -> np.ndarray:
        return clean_logits.argmin(axis=1) if self.loss == "least_likely" else clean_logits.argmax(axis=1)

    def _loss_and_gradient(self, x, targets, v, rng):
        clf = self.classifier
        logits = clf.forward_batch(x + v[0])[clf.logits_blob]
        value, dz = gap_loss(logits.reshape(len(x), -1), targets, self.loss)
        grad = clf.backward_batch({clf.logits_blob: dz.reshape(logits.shape)})
        return value, grad.sum(axis=0, keepdims=True)

    def _product(self, seed: int, rng: np.random.Generator) -> np.ndarray:
        return self._forward(self._noise(seed))[0]
