"""Feature denoising blocks (Xie, Wu, van der Maaten, Yuille, He, CVPR 2019, "Feature Denoising
for Improving Adversarial Robustness", arXiv:1812.03411): FD, a competitor of the FRUs.

After each target conv (the FRUs' targets, ``NetPreset.targets``) a denoising block replaces
the conv's output x (C channels, H x W) by ``x + conv1x1(nlm(x))``, where ``nlm`` is the
non-local means of the paper's Sec. 4.2 over the HW positions:

- ``gaussian`` (the paper's softmax version, its best): ``nlm(x)_i = sum_j softmax_j(theta(x_i) .
  phi(x_j) / sqrt(C')) x_j`` with theta, phi 1x1 convs C -> C' = C/2 (the authors' embedding);
- ``dot`` (the dot-product version, no embedding): ``nlm(x)_i = (1/HW) sum_j (x_i . x_j) x_j``,
  computed as ``(x x^T) x / HW`` so it costs C x C, not HW x HW.

The matrix products are Caffe ``BatchMatMul`` layers (caffe_build/patches/batch-mat-mul-layer.patch).
The 1x1 conv starts at zero, so an initial FD net computes exactly the baseline. Unlike the FRUs,
the whole network trains: FD is the ``internal`` entry of the competitor registry
(``competitors.py``), which builds its train net, solver and weights. The choices the paper
leaves open are in docs/fd.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from ..core import L, P, ToolkitError, caffe, caffe_pb2, load_net
from .graph import insert_blocks, layer_index

AFFINITIES = ("gaussian", "dot", "auto")
GAUSSIAN_MAX_POSITIONS = 56 * 56
"""``auto`` uses the Gaussian affinity up to this many positions (ResNet's largest stage in the
paper; an HW x HW affinity of VGG16's conv1_1, 224 x 224, would take 10 GB per image) and the
dot-product one beyond."""
EMBED_STD = 0.01
"""Standard deviation of the theta/phi embedding weights (the authors' initialiser; Caffe's
gaussian filler draws them when ``build.init_competitor_blobs`` loads the net)."""
_PLACEHOLDER = "__fd_input__"


@dataclass(frozen=True)
class FdNames:
    """Every layer and blob name of one denoising block (layer name = its top blob's name)."""

    raw: str        # the target conv's own output once the block takes its top name
    theta: str
    phi: str
    theta_flat: str
    phi_flat: str
    x_flat: str
    affinity: str
    scaled: str
    weights: str
    mean: str
    mean_map: str
    conv: str
    merge: str


def fd_names(layer: str) -> FdNames:
    """The single naming rule of FD blocks: ``<layer>_fd_<part>``."""
    def name(part: str) -> str:
        return f"{layer}_fd_{part}"
    return FdNames(raw=name("inp"), theta=name("theta"), phi=name("phi"), theta_flat=name("theta_flat"),
                   phi_flat=name("phi_flat"), x_flat=name("x_flat"), affinity=name("affinity"),
                   scaled=name("scaled"), weights=name("weights"), mean=name("mean"), mean_map=name("mean_map"),
                   conv=name("conv"), merge=name("merge"))


@dataclass(frozen=True)
class FdTarget:
    """One denoised conv output: its shape and the affinity its block uses.

    :param embed: channels C' of the theta/phi embeddings (0: no embedding, ``dot``).
    """

    layer: str
    channels: int
    height: int
    width: int
    affinity: str
    embed: int

    @property
    def positions(self) -> int:
        return self.height * self.width


def output_shapes(param: "caffe_pb2.NetParameter", layers: Sequence[str], source: str = "<net>") -> Dict[str, Tuple[int, ...]]:
    """``{layer: shape of its first top}`` at batch 1, from Caffe itself on the net cut after the
    last of ``layers`` (the classifier's weights are never allocated)."""
    last = max(layer_index(param, name, source) for name in layers)
    prefix = caffe_pb2.NetParameter()
    prefix.CopyFrom(param)
    del prefix.layer[:]
    prefix.layer.extend(param.layer[:last + 1])
    for layer in prefix.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = 1
    net = load_net(prefix, source=source)
    return {name: tuple(net.blobs[layer.top[0]].data.shape) for name in layers
            for layer in [param.layer[layer_index(param, name, source)]]}


def plan_fd(param: "caffe_pb2.NetParameter", layers: Sequence[str], affinity: str = "auto",
            source: str = "<net>") -> Tuple[FdTarget, ...]:
    """Check each target (a conv with one 4-D top) and choose its block's affinity."""
    if affinity not in AFFINITIES:
        raise ValueError(f"affinity must be one of {', '.join(AFFINITIES)}, got '{affinity}'")
    if not layers:
        raise ValueError("at least one FD target layer is needed")
    seen = set()
    for name in layers:
        if name in seen:
            raise ToolkitError(f"{source}: layer '{name}' is listed twice as an FD target")
        seen.add(name)
        layer = param.layer[layer_index(param, name, source)]
        if layer.type != "Convolution":
            raise ToolkitError(f"{source}: FD target '{name}' is a {layer.type} layer, not a Convolution")
        if len(layer.top) != 1:
            raise ToolkitError(f"{source}: FD target '{name}' has {len(layer.top)} tops; expected one")
    shapes = output_shapes(param, layers, source)
    plan = []
    for name in layers:
        shape = shapes[name]
        if len(shape) != 4:
            raise ToolkitError(f"{source}: FD target '{name}' makes a {len(shape)}-D blob; expected (N, C, H, W)")
        _, c, h, w = shape
        kind = affinity if affinity != "auto" else ("gaussian" if h * w <= GAUSSIAN_MAX_POSITIONS else "dot")
        plan.append(FdTarget(name, c, h, w, kind, max(1, c // 2) if kind == "gaussian" else 0))
    return tuple(plan)


def _flatten(x, name: str):
    """(N, C, H, W) -> (N, C, H*W)."""
    return L.Reshape(x, name=name, reshape_param=dict(shape=dict(dim=[0, 0, -1])))


def _matmul(a, b, name: str, transpose_a: bool = False, transpose_b: bool = False):
    """op(a) x op(b), per image; only the flags that are set are written."""
    flags = {key: True for key, on in (("transpose_a", transpose_a), ("transpose_b", transpose_b)) if on}
    return L.BatchMatMul(a, b, name=name, **({"batch_mat_mul_param": flags} if flags else {}))


def denoising_layers(target: FdTarget, raw: str, final: str) -> List["caffe_pb2.LayerParameter"]:
    """The layers of one denoising block, from the conv output ``raw`` to ``final``."""
    names = fd_names(target.layer)
    n = caffe.NetSpec()
    n[raw] = L.Input(name=_PLACEHOLDER)
    x = n[raw]
    n[names.x_flat] = _flatten(x, names.x_flat)
    if target.affinity == "gaussian":
        embed = dict(num_output=target.embed, kernel_size=1, weight_filler=dict(type="gaussian", std=EMBED_STD))
        n[names.theta] = L.Convolution(x, name=names.theta, **embed)
        n[names.phi] = L.Convolution(x, name=names.phi, **embed)
        n[names.theta_flat] = _flatten(n[names.theta], names.theta_flat)
        n[names.phi_flat] = _flatten(n[names.phi], names.phi_flat)
        # (N, HW, HW): theta^T phi / sqrt(C'), normalised over j by a softmax
        n[names.affinity] = _matmul(n[names.theta_flat], n[names.phi_flat], names.affinity, transpose_a=True)
        n[names.scaled] = L.Power(n[names.affinity], name=names.scaled, power_param=dict(scale=1 / math.sqrt(target.embed)))
        n[names.weights] = L.Softmax(n[names.scaled], name=names.weights, softmax_param=dict(axis=2))
        # (N, C, HW): y[:, i] = sum_j w[i, j] x[:, j]
        n[names.mean] = _matmul(n[names.x_flat], n[names.weights], names.mean, transpose_b=True)
    else:
        # (N, C, C) = x x^T / HW, then (N, C, HW) = that times x
        n[names.affinity] = _matmul(n[names.x_flat], n[names.x_flat], names.affinity, transpose_b=True)
        n[names.scaled] = L.Power(n[names.affinity], name=names.scaled, power_param=dict(scale=1 / target.positions))
        n[names.mean] = _matmul(n[names.scaled], n[names.x_flat], names.mean)
    n[names.mean_map] = L.Reshape(n[names.mean], name=names.mean_map,
                                  reshape_param=dict(shape=dict(dim=[0, 0, target.height, target.width])))
    n[names.conv] = L.Convolution(n[names.mean_map], name=names.conv, num_output=target.channels, kernel_size=1,
                                  weight_filler=dict(type="constant", value=0))
    n[final] = L.Eltwise(x, n[names.conv], name=names.merge, eltwise_param=dict(operation=P.Eltwise.SUM))
    return [layer for layer in n.to_proto().layer if layer.name != _PLACEHOLDER]


def insert_denoisers(param: "caffe_pb2.NetParameter", plan: Sequence[FdTarget]) -> "caffe_pb2.NetParameter":
    """A copy of the deploy net ``param`` with a denoising block after each planned conv."""
    blocks = {}
    for target in plan:
        names = fd_names(target.layer)
        blocks[target.layer] = (names.raw, names.merge,
                                lambda raw, final, t=target: denoising_layers(t, raw, final))
    return insert_blocks(param, blocks)


def fd_deploy(base: "caffe_pb2.NetParameter", layers: Sequence[str], affinity: str = "auto",
              source: str = "<net>") -> Tuple["caffe_pb2.NetParameter", Tuple[FdTarget, ...]]:
    """The FD deploy net (blocks after ``layers``) and its plan; the competitor registry
    (``competitors.COMPETITORS["fd"]``) makes the train net, the solver and the weights from it."""
    plan = plan_fd(base, layers, affinity, source)
    deploy = insert_denoisers(base, plan)
    if deploy.name:
        deploy.name = f"{deploy.name}_FD"
    return deploy, plan
