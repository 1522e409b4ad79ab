"""Pixel deflection (``defense.evaluate.deflection`` and the ``pd`` peer): each step against a
numpy or hand-computed reference on tiny arrays, its determinism, its spec strings, and its
effect on the shipped FashionNet and UAP."""
from pathlib import Path

import numpy as np
import pytest
from skimage.restoration import denoise_wavelet
from skimage.transform import resize

from attacks.classifier import CaffeClassifier
from defense.core import L, P, ToolkitError, caffe, load_net, set_net_blobs
from defense.evaluate import deflection
from defense.evaluate.peers import PixelDeflection, make_peer, peer_specs, split_peer_specs

ROOT = Path(__file__).resolve().parents[3]


class ScriptedRng:
    """Hands out fixed draws in order, so a deflection can be worked out by hand."""

    def __init__(self, integers, randoms):
        self._integers, self._randoms = list(integers), list(randoms)

    def integers(self, low, high=None):
        value = self._integers.pop(0)
        lo, hi = (0, low) if high is None else (low, high)
        assert lo <= value < hi, (value, lo, hi)
        return value

    def random(self):
        return self._randoms.pop(0)


# ---------------------------------------------------------------- deflection
def test_deflect_copies_the_drawn_neighbour_by_hand():
    image = np.arange(9, dtype=np.float32).reshape(1, 3, 3)  # [[0 1 2] [3 4 5] [6 7 8]]
    keep = np.zeros((3, 3))
    # 1st: position (1, 1), offset (-1, +1) -> takes (0, 2) = 2
    # 2nd: position (0, 0), offset (-1, 0) lies outside, redrawn as (+1, +1) -> takes (1, 1), now 2
    rng = ScriptedRng([1, 1, -1, 1, 0, 0, -1, 0, 1, 1], [0.5, 0.5])
    out = deflection.deflect(image, keep, deflections=2, window=1, rng=rng)
    np.testing.assert_array_equal(out[0], [[2, 1, 2], [3, 2, 5], [6, 7, 8]])
    np.testing.assert_array_equal(image[0], np.arange(9).reshape(3, 3))  # the input is untouched


def test_deflect_skips_kept_pixels_and_visits_channels_in_turn():
    image = np.stack([np.full((2, 2), 10.0), np.full((2, 2), 20.0)]).astype(np.float32)
    image[0, 0, 1] = 11.0
    image[1, 1, 0] = 21.0
    keep = np.array([[0.0, 1.0], [0.5, 0.0]])
    # visit 1, channel 0: (0, 1), u=0.99 < keep 1 -> skipped; visit 2, channel 1: (1, 1), u=0.2 >= 0
    # -> offset (0, -1) takes (1, 0) = 21; visit 3, channel 0: (0, 0), offset (0, +1) takes 11
    rng = ScriptedRng([0, 1, 1, 1, 0, -1, 0, 0, 0, 1], [0.99, 0.2, 0.0])
    out = deflection.deflect(image, keep, deflections=2, window=1, rng=rng)
    np.testing.assert_array_equal(out[0], [[11, 11], [10, 10]])
    np.testing.assert_array_equal(out[1], [[20, 20], [21, 21]])


def test_deflect_refuses_a_map_that_keeps_everything():
    with pytest.raises(ValueError, match="keeps every pixel"):
        deflection.deflect(np.zeros((1, 2, 2)), np.ones((2, 2)), 1, 1, np.random.default_rng(0))


def test_scaled_defaults_follow_the_authors_imagenet_values():
    assert deflection.scaled_defaults(224, 224) == (200, 10)
    assert deflection.scaled_defaults(227, 227) == (205, 10)
    assert deflection.scaled_defaults(28, 28) == (3, 1)


# ---------------------------------------------------------------- wavelet denoising
@pytest.mark.parametrize("channels", [1, 3])
def test_wavelet_step_equals_scikit_image(channels):
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 255, (channels, 16, 16)).astype(np.float32)
    out = deflection.wavelet_denoise(image, 0.04)
    x = image.astype(np.float64) / 255.0
    if channels == 1:
        ref = denoise_wavelet(x[0], sigma=0.04, mode="soft", method="BayesShrink")[None]
    else:  # BGR in, RGB (then YCbCr) inside, as the authors' RGB images
        ref = denoise_wavelet(x[::-1].transpose(1, 2, 0), sigma=0.04, mode="soft", method="BayesShrink",
                              channel_axis=-1, convert2ycbcr=True).transpose(2, 0, 1)[::-1]
    np.testing.assert_allclose(out, ref * 255.0, atol=1e-3)
    assert np.abs(out - image).mean() > 1.0  # it does smooth


# ---------------------------------------------------------------- activation maps
def _classifier(head: str, seed: int = 0) -> CaffeClassifier:
    """data (2,1,6,6) -> conv 4ch 3x3 pad 1 -> ReLU -> head -> 3 logits -> prob.
    ``gap``: global average pool + one fully connected layer (a CAM net); ``fc``: FC on the map."""
    n = caffe.NetSpec()
    n.data = L.Input(name="data", shape=dict(dim=[2, 1, 6, 6]))
    n.conv = L.Convolution(n.data, name="conv", num_output=4, kernel_size=3, pad=1)
    n.relu = L.ReLU(n.conv, name="relu", in_place=True)
    if head == "gap":
        n.gap = L.Pooling(n.relu, name="gap", pool=P.Pooling.AVE, global_pooling=True)
        n.fc = L.InnerProduct(n.gap, name="fc", num_output=3)
    else:
        n.fc = L.InnerProduct(n.relu, name="fc", num_output=3)
    n.prob = L.Softmax(n.fc, name="prob")
    net = load_net(n.to_proto(), force_backward=True)
    rng = np.random.default_rng(seed)
    set_net_blobs(net, {name: [rng.normal(0, 0.5, b.data.shape).astype(np.float32) for b in blobs]
                        for name, blobs in net.params.items()})
    return CaffeClassifier(net, 0.0, "data", "fc")


def _conv_relu(clf: CaffeClassifier, x: np.ndarray) -> np.ndarray:
    """The feature map after the in-place ReLU (the blob keeps the conv's name)."""
    return clf.blob_values(x, ["conv"])["conv"]


def test_cam_of_a_gap_fc_net_equals_numpy():
    clf = _classifier("gap")
    x = np.random.default_rng(1).uniform(0, 255, (2, 1, 6, 6)).astype(np.float32)
    a = _conv_relu(clf, x)                                   # (2, 4, 6, 6), after the ReLU
    w, b = (p.data for p in clf.net.params["fc"])
    logits = a.mean(axis=(2, 3)) @ w.T + b
    labels, maps = deflection.activation_maps(clf, x)
    np.testing.assert_array_equal(labels, logits.argmax(axis=1))
    cam = np.einsum("nk,nkhw->nhw", w[labels], a)             # Zhou et al.: sum_k W[c, k] A_k
    np.testing.assert_allclose(maps * 36, cam, rtol=1e-4, atol=1e-4 * np.abs(cam).max())
    prob = deflection.deflection_probability(maps, 12, 12)
    ref = np.stack([resize(m, (12, 12), order=1, mode="edge", anti_aliasing=False) for m in cam])
    ref = (ref - ref.min(axis=(1, 2), keepdims=True)) / np.ptp(ref, axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(prob, ref, atol=1e-4)
    assert prob.min() == 0.0 and prob.max() == 1.0


def test_grad_cam_where_the_net_has_no_cam():
    """FC on the feature map: alpha_k is the spatial mean of the top logit's FC weights on channel k."""
    clf = _classifier("fc")
    assert deflection.feature_blob(clf) == "conv"
    x = np.random.default_rng(2).uniform(0, 255, (2, 1, 6, 6)).astype(np.float32)
    a = _conv_relu(clf, x)
    w = clf.net.params["fc"][0].data.reshape(3, 4, 6, 6)
    labels, maps = deflection.activation_maps(clf, x)
    np.testing.assert_array_equal(labels, clf.labels(x))
    grad = w[labels]  # d logit / d A, A after the ReLU: the FC weights themselves
    ref = np.einsum("nk,nkhw->nhw", grad.mean(axis=(2, 3)), a)
    np.testing.assert_allclose(maps, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_constant_map_deflects_uniformly():
    np.testing.assert_array_equal(deflection.deflection_probability(np.ones((1, 2, 2)), 4, 4), 0.0)


# ---------------------------------------------------------------- the peer
def test_pd_is_deterministic_for_a_seed_and_independent_of_the_batch():
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 255, (3, 3, 20, 20)).astype(np.float32)
    pd = PixelDeflection(deflections=40, window=3, map="uniform", seed=7)
    out = pd(x)
    np.testing.assert_array_equal(out, pd(x))
    np.testing.assert_array_equal(out[::-1], pd(x[::-1]))     # another order, the same images
    np.testing.assert_array_equal(out[1:2], pd(x[1:2]))      # another batch
    assert not np.array_equal(out, PixelDeflection(deflections=40, window=3, map="uniform", seed=8)(x))
    assert out.dtype == np.float32 and out.shape == x.shape


def test_pd_with_the_map_deflects_where_the_net_does_not_look():
    """The chain: clip, deflect where the map is low, denoise; checked against the steps by hand."""
    clf = _classifier("gap")
    x = np.random.default_rng(5).uniform(-20, 275, (2, 1, 6, 6)).astype(np.float32)
    pd = PixelDeflection(deflections=5, window=1, seed=3)
    keep = deflection.deflection_probability(deflection.activation_maps(clf, x)[1], 6, 6)
    clipped = np.clip(x, 0, 255)
    ref = np.stack([deflection.wavelet_denoise(deflection.deflect(img, k, 5, 1, deflection.image_rng(3, img)), 0.04)
                    for img, k in zip(clipped, keep)])
    np.testing.assert_allclose(pd(x, clf), ref, atol=1e-4)
    with pytest.raises(ValueError, match="map=cam needs the classifier"):
        pd(x)


def test_pd_specs():
    assert make_peer("pd").describe() == "pd(deflections=auto, window=auto, sigma=0.04, map=cam, seed=0)"
    pd = make_peer("pd:deflections=200,window=10,sigma=0.05,map=uniform,seed=3")
    assert (pd.deflections, pd.window, pd.sigma, pd.map, pd.seed) == (200, 10, 0.05, "uniform", 3)
    assert make_peer("pd:7").deflections == 7 and make_peer("median:window_size=5").window_size == 5
    assert split_peer_specs("median:3, pd:deflections=3,window=1,bits:4") == ["median:3", "pd:deflections=3,window=1",
                                                                            "bits:4"]
    assert peer_specs("jpeg:75,pd:seed=2") == ["jpeg:75", "pd:seed=2"]


@pytest.mark.parametrize("spec,message", [
    ("pd:deflections=0", "peer defence 'pd:deflections=0': deflections must be a positive integer, got 0"),
    ("pd:window=x", "peer defence 'pd:window=x': window must be an integer, got 'x'"),
    ("pd:sigma=2", r"peer defence 'pd:sigma=2': sigma must be in \(0, 1\)"),
    ("pd:map=saliency", "peer defence 'pd:map=saliency': map must be one of cam, uniform, got 'saliency'"),
    ("pd:seed=-1", "peer defence 'pd:seed=-1': seed must be an integer from 0 to 4294967295, got -1"),
    ("pd:radius=3", "peer defence 'pd:radius=3': unknown option 'radius'; options: deflections, window, sigma, "
                    "map, seed"),
    ("pd:window=1,window=2", "peer defence 'pd:window=1,window=2': option 'window' given twice"),
    ("pd:window=1,2", "peer defence 'pd:window=1,2': '2' needs a name"),
    ("median:x", "peer defence 'median:x': window_size must be an integer, got 'x'"),
])
def test_bad_pd_specs_are_one_line(spec, message):
    with pytest.raises(ToolkitError, match=message):
        make_peer(spec)


# ---------------------------------------------------------------- FashionNet
FASHION = (ROOT / "prototxt/FashionNet/deploy_fashionnet.prototxt", ROOT / "weights/FashionNet/fashionnet.caffemodel",
           ROOT / "attacks/samples/FashionNet/uap_linf.npy")


@pytest.mark.skipif(not all(p.is_file() for p in FASHION), reason="FashionNet demo files not shipped")
def test_pd_restores_the_shipped_fashionnet_uap():
    """200 seeded test images + the shipped l_inf UAP (xi 50): the baseline classifies 0.345 of the
    perturbed images right, behind PD (defaults scaled to 28 x 28, Grad-CAM map) 0.67, clean
    top-1 0.895 and 0.9 behind PD (measured; one image of slack for another CPU's rounding)."""
    from defense.data import FashionMnist
    from defense.presets import get_preset

    test = FashionMnist("test")
    x, y = test.take(np.sort(np.random.default_rng(0).choice(len(test), 200, replace=False)))
    v = np.load(FASHION[2], allow_pickle=False)
    clf = CaffeClassifier.from_files(FASHION[0], FASHION[1], get_preset("FashionNet").mean_bgr, batch_size=100)
    assert deflection.feature_blob(clf) == "conv3"
    pd = make_peer("pd")
    base_clean, base_pert = (float(np.mean(clf.labels(z) == y)) for z in (x, x + v))
    pd_clean, pd_pert = (float(np.mean(clf.labels(pd(z, clf)) == y)) for z in (x, x + v))
    assert (base_clean, base_pert) == pytest.approx((0.895, 0.345), abs=0.0051)
    assert (pd_clean, pd_pert) == pytest.approx((0.9, 0.67), abs=0.0051)
    assert pd_pert > base_pert + 0.3
