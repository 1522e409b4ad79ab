"""NAG: Network for Adversary Generation (Mopuri, Ojha, Garg, Babu, CVPR 2018).

A generator maps latent vectors z ~ U[-1, 1]^d to a distribution of universal perturbations:
a fully connected layer to a small map, stride-2 up-convolutions with leaky ReLU (slope 0.2)
doubling it to the input size, tanh (the released code's generator; its batch normalisation is
the identity there). Each image of a batch gets its own perturbation v_i = G(z_i), scaled to the
budget. Loss (minimised): the fooling loss -log(1 - mean_i q_i[c_i]) (q: softmax on x_i + v_i,
c_i: the clean top-1) plus the diversity loss -lambda mean((f(x_i + v_i) - f(x_i + v_j(i)))^2),
f the activations of ``layer`` and j(i) != i a shuffle of the batch's perturbations (the
released code: lambda 10, mean squared distance, ResNet-50's res4f). Both passes run as one
batch of 2B images. ``sample(count, rng)`` draws as many perturbations as asked.

The learning rate defaults to 0.005 (the code's 0.001 is for 60 ImageNet epochs; the toolkit's
runs are a few hundred iterations). Caffe's up-convolutions are 4x4, stride 2, pad 1 (exact
doubling; the code's 5x5 'SAME' has no Caffe equivalent). Inputs of at least 128 pixels get the
paper's widths (64 x 16 = 1024 at 7x7 down to 64); smaller ones start from 32 filters. The
diversity weight's scale depends on the layer's: 10 suits res4f; FashionNet's last conv, with
squared distances of ~200, needs ~0.05 (the reproduction's ``nag_diversity``).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from defense.core import L, caffe

from .classifier import softmax
from .generative import GenerativeAttack, net_blob

PAPER_NGF = 64
SMALL_NGF = 32
PAPER_MIN_INPUT = 128
MAX_UPSAMPLINGS = 5  # 7 -> 224 in the paper
MIN_BASE = 7


def fooling_loss(logits: np.ndarray, clean: np.ndarray) -> Tuple[float, np.ndarray]:
    """-log(1 - m), m = mean_i softmax(z_i)[c_i]; and its gradient w.r.t. the logits."""
    z = np.asarray(logits, np.float64)
    n = len(z)
    p = softmax(z)
    q = p[np.arange(n), clean]
    m = float(q.mean())
    onehot = np.zeros_like(p)
    onehot[np.arange(n), clean] = 1.0
    return -math.log(max(1.0 - m, 1e-300)), q[:, None] * (onehot - p) / (n * max(1.0 - m, 1e-300))


def diversity_loss(f1: np.ndarray, f2: np.ndarray, weight: float) -> Tuple[float, np.ndarray, np.ndarray]:
    """-weight mean((f1 - f2)^2) over every element; and its gradients w.r.t. f1 and f2."""
    d = np.asarray(f1, np.float64) - np.asarray(f2, np.float64)
    grad = -2.0 * weight * d / d.size
    return float(-weight * np.mean(d * d)), grad, -grad


def partners(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random shuffle j of 0..n-1 with j(i) != i (n >= 2): each image pairs with another latent."""
    order = rng.permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[order] = np.roll(order, -1)
    return out


def upsampling_plan(size: Tuple[int, int]) -> Tuple[int, Tuple[int, int]]:
    """(number of doublings, base map size): as many as keep the base at least 7 pixels, at most 5."""
    k = 0
    while k < MAX_UPSAMPLINGS and math.ceil(min(size) / 2 ** (k + 1)) >= MIN_BASE:
        k += 1
    return k, (math.ceil(size[0] / 2 ** k), math.ceil(size[1] / 2 ** k))


class NAG(GenerativeAttack):
    """:param ngf: width of the last up-convolution; each earlier one doubles it (None: 64 from
        128 pixels up, else 32). ``latent_dim``: the latent's size.
    :param layer: blob of the diversity loss (None: the last conv output).
    :param diversity_weight: lambda of the diversity loss.
    """

    name = "nag"
    attack_params = GenerativeAttack.common_params + ("ngf", "latent_dim", "layer", "diversity_weight")
    input_blob = "latent"
    min_batch = 2

    def __init__(self, classifier, norm: str = "inf", xi: Optional[float] = None, max_iter: int = 200,
                 batch_size: int = 32, lr: float = 0.005, beta1: float = 0.9, ngf: Optional[int] = None,
                 latent_dim: int = 100, layer: Optional[str] = None, diversity_weight: float = 10.0,
                 snapshot_dir=None, snapshot_every: int = 0, resume=None, verbose: bool = True):
        super().__init__(classifier, norm=norm, xi=xi, max_iter=max_iter, batch_size=batch_size, lr=lr, beta1=beta1,
                         ngf=ngf, latent_dim=latent_dim, layer=layer, diversity_weight=diversity_weight,
                         snapshot_dir=snapshot_dir, snapshot_every=snapshot_every, resume=resume, verbose=verbose)

    def _check_params(self) -> None:
        self._check_common()
        small = min(self.classifier.input_shape[1:]) < PAPER_MIN_INPUT
        self.ngf = self._positive_int("ngf", (SMALL_NGF if small else PAPER_NGF) if self.ngf is None else self.ngf)
        self.latent_dim = self._positive_int("latent_dim", self.latent_dim)
        if not float(self.diversity_weight) >= 0:
            raise ValueError(f"diversity_weight must be 0 or positive, got {self.diversity_weight}")
        if self.layer is None:
            convs = self.classifier.conv_blobs()
            if not convs:
                raise ValueError("the network has no convolution; name the diversity loss's blob (layer)")
            self.layer = convs[-1]
        self.classifier.producer(self.layer)

    # ------------------------------------------------------------ the generator
    def _build(self, n: "caffe.NetSpec"):
        c, h, w = self.classifier.input_shape
        batch = self.batch_size
        k, (bh, bw) = upsampling_plan((h, w))
        widths = [self.ngf * 2 ** (k - 1 - j) for j in range(k)] + [c]
        latent = net_blob(n, self.input_blob, L.Input(name=self.input_blob, shape=dict(dim=[batch, self.latent_dim])))
        x = net_blob(n, "g_fc", L.InnerProduct(latent, name="g_fc", num_output=widths[0] * bh * bw))
        x = net_blob(n, "g_map", L.Reshape(x, name="g_map", shape=dict(dim=[0, widths[0], bh, bw])))
        net_blob(n, "g_map_relu", L.ReLU(x, name="g_map_relu", negative_slope=0.2, in_place=True))
        for j in range(k):
            name = f"g_up{j + 1}"
            x = net_blob(n, name, L.Deconvolution(x, name=name, convolution_param=dict(
                num_output=widths[j + 1], kernel_size=4, stride=2, pad=1)))
            if j + 1 < k:
                net_blob(n, f"{name}_relu", L.ReLU(x, name=f"{name}_relu", negative_slope=0.2, in_place=True))
        if (bh * 2 ** k, bw * 2 ** k) != (h, w):
            ref = net_blob(n, "g_size", L.Input(name="g_size", shape=dict(dim=[1, 1, h, w])))
            x = self._crop(n, x, (bh * 2 ** k, bw * 2 ** k), ref)
        return net_blob(n, "generated", L.TanH(x, name="generated")), batch

    # ------------------------------------------------------------ the attack
    def _latents(self, count: int, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, (count, self.latent_dim)).astype(np.float32)

    def _generator_input(self, seed: int, rng: np.random.Generator) -> np.ndarray:
        return self._latents(self.batch_size, rng)

    def _targets(self, clean_logits: np.ndarray) -> np.ndarray:
        return clean_logits.argmax(axis=1)

    def _loss_and_gradient(self, x, targets, v, rng):
        """Fooling loss on x_i + v_i, diversity between x_i + v_i and x_i + v_j(i), one 2B batch."""
        clf = self.classifier
        b = len(x)
        v = v[:b]
        pair = partners(b, rng)
        out = clf.forward_batch(np.concatenate([x + v, x + v[pair]]), [clf.logits_blob, self.layer])
        logits, feats = out[clf.logits_blob], out[self.layer]
        fool, dz = fooling_loss(logits[:b].reshape(b, -1), targets)
        div, d1, d2 = diversity_loss(feats[:b], feats[b:], float(self.diversity_weight))
        dlogits = np.zeros_like(logits)
        dlogits[:b] = dz.reshape(logits[:b].shape)
        grad_in = clf.backward_batch({clf.logits_blob: dlogits, self.layer: np.concatenate([d1, d2])})
        grad = np.zeros((self.batch_size,) + grad_in.shape[1:], np.float32)
        grad[:b] = grad_in[:b]
        grad[pair] += grad_in[b:]
        return fool + div, grad

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` perturbations (count, C, H, W) of the trained generator, latents from ``rng``."""
        if not hasattr(self, "_net"):
            raise RuntimeError("sample needs a trained generator: call generate first")
        count = self._positive_int("count", count)
        z = self._latents(count, rng)
        out = []
        for s in range(0, count, self.batch_size):
            chunk = z[s:s + self.batch_size]
            padded = np.concatenate([chunk, np.zeros((self.batch_size - len(chunk), self.latent_dim), np.float32)])
            out.append(self._forward(padded)[:len(chunk)])
        return np.concatenate(out)

    def _product(self, seed: int, rng: np.random.Generator) -> np.ndarray:
        return self.sample(1, rng)[0]
