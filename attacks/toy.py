"""A tiny Fashion-MNIST classifier trained in seconds with pycaffe, for tests and benchmarks.

Images: Fashion-MNIST items replicated to 3 "BGR" channels, (N,3,28,28) float32 in
[0,255]; the deploy net subtracts nothing itself (the classifier's mean is ``MEAN``) and
scales its input by 1/64 with a Power layer so Xavier initialisation suits pixel units.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import numpy as np

from defense.core import (L, P, caffe, caffe_pb2, read_idx, solver_param, step_solver, subtract_mean, write_net_param,
                          write_text)
from defense.presets import FASHION_MNIST_DIR, FASHION_MNIST_FILES, FASHION_MNIST_FIX

MEAN = (128.0, 128.0, 128.0)
SIZE = 28
CLASSES = 10


def fashion_subset(split: str, n: int, start: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` images of the 'train' or 'test' split as (N,3,28,28) float32 and int64 labels."""
    image_file, label_file, _ = FASHION_MNIST_FILES[split]
    images = read_idx(FASHION_MNIST_DIR / image_file, 3, FASHION_MNIST_FIX)[start:start + n]
    labels = read_idx(FASHION_MNIST_DIR / label_file, 1, FASHION_MNIST_FIX)[start:start + n]
    x = np.repeat(images[:, None].astype(np.float32), 3, axis=1)
    return np.ascontiguousarray(x), labels.astype(np.int64)


def tiny_net(batch: int, train: bool, fc_width: int = 0) -> "caffe_pb2.NetParameter":
    """conv(8,5) - relu - pool - conv(16,3) - relu - pool - [fc(w) - relu] x 2 - fc(10).

    Softmax (deploy) or loss (train). ``fc_width`` > 0 adds the two wide fully connected
    layers, a small-scale copy of CaffeNet's layout (most weights in fc layers).
    """
    n = caffe.NetSpec()
    n.data = L.Input(name="data", shape=dict(dim=[batch, 3, SIZE, SIZE]))
    if train:
        n.label = L.Input(name="label", shape=dict(dim=[batch]))
    filler = dict(type="xavier")
    n.scaled = L.Power(n.data, name="input_scale", scale=1.0 / 64)
    n.conv1 = L.Convolution(n.scaled, name="conv1", num_output=8, kernel_size=5, weight_filler=filler)
    n.relu1 = L.ReLU(n.conv1, name="relu1", in_place=True)
    n.pool1 = L.Pooling(n.relu1, name="pool1", pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.conv2 = L.Convolution(n.pool1, name="conv2", num_output=16, kernel_size=3, weight_filler=filler)
    n.relu2 = L.ReLU(n.conv2, name="relu2", in_place=True)
    n.pool2 = L.Pooling(n.relu2, name="pool2", pool=P.Pooling.MAX, kernel_size=2, stride=2)
    top = n.pool2
    if fc_width:
        n.fc1 = L.InnerProduct(n.pool2, name="fc1", num_output=fc_width, weight_filler=filler)
        n.relu_fc1 = L.ReLU(n.fc1, name="relu_fc1", in_place=True)
        n.fc2 = L.InnerProduct(n.relu_fc1, name="fc2", num_output=fc_width, weight_filler=filler)
        n.relu_fc2 = L.ReLU(n.fc2, name="relu_fc2", in_place=True)
        top = n.relu_fc2
    n.fc3 = L.InnerProduct(top, name="fc3", num_output=CLASSES, weight_filler=filler)
    if train:
        n.loss = L.SoftmaxWithLoss(n.fc3, n.label, name="loss")
    else:
        n.prob = L.Softmax(n.fc3, name="prob")
    return n.to_proto()


def train_tiny_net(out_dir: os.PathLike | str, iters: int = 300, n_train: int = 3000,
                   seed: int = 0, fc_width: int = 0) -> Tuple[Path, Path]:
    """Train the tiny net (Adam, batch 64) on the CPU; returns (deploy prototxt, caffemodel)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    batch = 64
    write_net_param(out / "train.prototxt", tiny_net(batch, train=True, fc_width=fc_width))
    write_net_param(out / "deploy.prototxt", tiny_net(1, train=False, fc_width=fc_width))
    solver = solver_param(train_net=str(out / "train.prototxt"), base_lr=3e-3, solver_type="Adam", momentum=0.9,
                          momentum2=0.999, lr_policy="fixed", max_iter=iters, display=0, random_seed=seed,
                          snapshot_after_train=False)
    write_text(out / "solver.prototxt", str(solver))
    caffe.set_random_seed(seed)
    s = caffe.get_solver(str(out / "solver.prototxt"))
    x, y = fashion_subset("train", n_train)
    rng = np.random.default_rng(seed)
    per_epoch = len(x) // batch
    for it in range(iters):
        if it % per_epoch == 0:
            order = rng.permutation(len(x))
        idx = order[(it % per_epoch) * batch:][:batch]
        step_solver(s, {"data": subtract_mean(x[idx], MEAN), "label": y[idx]})
    weights = out / "tiny.caffemodel"
    s.net.save(str(weights))
    return out / "deploy.prototxt", weights
