"""CaffeClassifier, gradients, and every attack on a tiny trained Fashion-MNIST net."""
import json

import numpy as np
import pytest

from attack_fixtures import MEAN, fashion_subset, trained_tiny_net
from attacks import FFF, GDUAP, SPGD, SVUAP, UAP, CaffeClassifier
from attacks.__main__ import main as cli_main
from attacks.classifier import logits_blob_name
from attacks.deepfool import deepfool
from attacks.perturbation_io import load_perturbation
from attacks.projection import lp_norm
from defense.core import ToolkitError, read_net_param, run_cli


@pytest.fixture(scope="module")
def net_files():
    return trained_tiny_net()


@pytest.fixture(scope="module")
def clf(net_files):
    return CaffeClassifier.from_files(*net_files, MEAN, batch_size=50)


@pytest.fixture(scope="module")
def data():
    x, y = fashion_subset("test", 500)
    return x[:250], x[250:], y[250:]


def _jitter(x):
    return x + np.random.default_rng(11).uniform(0, 4, x.shape).astype(np.float32)


def _relative_error(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-12)

# ---------------------------------------------------------------- classifier


def test_gradient_net_skips_frozen_weight_gradients(net_files, data):
    """The attacks' nets (frozen weights, force_backward) give the input gradient without
    computing any weight gradient (caffe_build/patches/force-backward-keeps-frozen-params.patch);
    the input gradient is the one of the same net with trainable weights, byte for byte."""
    from attacks.classifier import load_gradient_net
    from defense.core import load_net
    prototxt, weights = net_files
    frozen = load_gradient_net(prototxt, weights)
    trainable = load_net(prototxt, weights, force_backward=True)
    x = data[0][:8] - np.float32(MEAN[0])
    gradients = []
    for net in (frozen, trainable):
        net.blobs["data"].reshape(*x.shape)
        net.reshape()
        net.blobs["data"].data[...] = x
        out = net.forward()
        top = list(out)[0]
        net.blobs[top].diff[...] = np.random.default_rng(3).normal(size=net.blobs[top].diff.shape)
        net.backward()
        gradients.append(net.blobs["data"].diff.copy())
    assert np.abs(gradients[0]).sum() > 0
    np.testing.assert_array_equal(gradients[0], gradients[1])
    assert all(not blob.diff.any() for blobs in frozen.params.values() for blob in blobs)
    assert any(blob.diff.any() for blobs in trainable.params.values() for blob in blobs)


def test_classifier_is_trained_and_batch_independent(clf, data):
    _, held, y = data
    assert np.mean(clf.labels(held) == y) > 0.75
    np.testing.assert_allclose(clf.logits(held[:30], batch_size=7), clf.logits(held[:30], batch_size=30),
                               rtol=1e-5, atol=1e-4)
    p = clf.predict(held[:5])
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)


def test_logits_blob_is_the_softmax_bottom(net_files, clf):
    assert logits_blob_name(read_net_param(net_files[0])) == "fc3" == clf.logits_blob
    assert clf.input_shape == (3, 28, 28) and clf.num_classes == 10
    assert clf.conv_blobs() == ["conv1", "conv2"]


def test_mean_is_subtracted_in_pixel_space(net_files, clf, data):
    x = data[1][:8]
    zero_mean = CaffeClassifier.from_files(*net_files, 0.0)
    np.testing.assert_allclose(zero_mean.logits(x - 128.0), clf.logits(x), rtol=1e-5, atol=1e-4)


def test_clip_flag(net_files, data):
    clipped = CaffeClassifier.from_files(*net_files, MEAN, clip=True)
    x = data[1][:4] + np.float32(100.0)
    np.testing.assert_allclose(clipped.logits(x), clipped.logits(np.clip(x, 0, 255)), rtol=1e-6)
    g = clipped.class_gradients(x, np.zeros(4, int))[:, 0]
    assert np.all(g[x > 255] == 0) and np.any(g[x < 255] != 0)


def test_class_gradients_match_finite_differences(clf, data):
    """Along the gradient itself and along single high-gradient pixels (central differences).

    Images get a little noise: Fashion-MNIST's flat black background makes exact max-pool
    ties, where the net is not differentiable.
    """
    x = _jitter(data[1][:3])
    classes = np.array([[0, 3], [1, 7], [9, 2]])
    grads = clf.class_gradients(x, classes)
    for i in range(3):
        for m, c in enumerate(classes[i]):
            g = grads[i, m]
            u = g / np.linalg.norm(g)
            h = np.float32(0.05)
            fd = (clf.logits((x[i] + h * u)[None])[0, c] - clf.logits((x[i] - h * u)[None])[0, c]) / (2 * h)
            assert _relative_error(float(fd), float(np.linalg.norm(g))) < 1e-2
            for flat in np.argsort(-np.abs(g).ravel())[:3]:
                # a ReLU or max-pool kink inside one step spoils that step's difference (seen at
                # 0.25 on some CPUs), so the gradient must match at one of two step sizes
                errors = []
                for step in (0.1, 0.25):
                    e = np.zeros(g.size, np.float32)
                    e[flat] = step
                    e = e.reshape(g.shape)
                    fd = (clf.logits((x[i] + e)[None])[0, c] - clf.logits((x[i] - e)[None])[0, c]) / (2 * step)
                    errors.append(_relative_error(float(fd), float(g.ravel()[flat])))
                assert min(errors) < 2e-2


def test_loss_gradient_matches_finite_differences(clf, data):
    x = _jitter(data[1][:2])
    labels = np.array([4, 5])
    loss, g = clf.loss_gradient(x, labels)
    for i in range(2):
        u = g[i] / np.linalg.norm(g[i])
        lp, _ = clf.loss_gradient((x[i] + u)[None], labels[i:i + 1])
        lm, _ = clf.loss_gradient((x[i] - u)[None], labels[i:i + 1])
        assert _relative_error(float(lp[0] - lm[0]) / 2, float(np.linalg.norm(g[i]))) < 1e-2
    probs = clf.predict(x)
    np.testing.assert_allclose(loss, -np.log(probs[[0, 1], labels]), rtol=1e-5)


def test_multi_blob_gradient_is_the_sum_of_single_blob_gradients(clf, data):
    x = data[1][:4]
    rng = np.random.default_rng(2)
    acts = clf.blob_values(x, ["conv1", "conv2", "fc3"])
    diffs = {b: rng.normal(size=a.shape).astype(np.float32) for b, a in acts.items()}
    together = clf.input_gradient(x, diffs)
    apart = sum(clf.input_gradient(x, {b: d}) for b, d in diffs.items())
    np.testing.assert_allclose(together, apart, rtol=1e-4, atol=1e-5 * np.abs(apart).max())


def test_svuap_jacobian_products_are_adjoint(clf, data):
    """<J u, J u> = <u, J^T (J u)>: the finite-difference J u and the backward J^T agree."""
    xs = _jitter(data[1][:4])
    u = np.random.default_rng(3).normal(size=clf.input_shape).astype(np.float32)
    for layer in ("conv1", "conv2"):
        att = SVUAP(clf, xi=30, layer=layer, fd_step=0.1, verbose=False)
        jv = att.jvp(xs, u)
        assert _relative_error(float((jv * jv).sum()), float((u * att.vjp(xs, jv)).sum())) < 1e-2


def test_classifier_errors(clf, tmp_path):
    with pytest.raises(ValueError, match=r"images must have shape \(N, 3, 28, 28\)"):
        clf.logits(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(ToolkitError, match="prototxt not found"):
        CaffeClassifier.from_files(tmp_path / "none.prototxt", None, MEAN)
    with pytest.raises(ValueError, match="mean has 2 values but the network takes 3 channels"):
        CaffeClassifier(clf.net, (1.0, 2.0), "data", "fc3")


# ---------------------------------------------------------------- DeepFool and UAP


def test_batched_deepfool_equals_one_image_at_a_time(clf, data, monkeypatch):
    # Caffe's batched convolution rounds an image's logits differently (1e-7) with other images in
    # its GEMM, and DeepFool turns such differences into another step near a tie between classes:
    # this test is about DeepFool's batching, so the convolution runs one image at a time
    monkeypatch.setenv("CAFFE_CONV_BATCH", "0")
    x = data[0][:12]
    batched = deepfool(clf, x, batch_size=12)
    single = deepfool(clf, x, batch_size=1)
    assert batched.converged.mean() > 0.9
    np.testing.assert_array_equal(batched.converged, single.converged)
    np.testing.assert_array_equal(batched.n_iter, single.n_iter)
    np.testing.assert_allclose(batched.step, single.step, rtol=1e-3, atol=1e-3)
    labels0 = clf.labels(x)
    moved = clf.labels(x + batched.step)
    assert np.all(moved[batched.converged] != labels0[batched.converged])


@pytest.mark.parametrize("norm,xi", [("inf", 80.0), ("2", 2500.0)])
def test_uap_fools_and_stays_in_ball(clf, data, norm, xi):
    x = data[0][:200]
    before = x.copy()
    res = UAP(clf, norm=norm, xi=xi, delta=0.19, max_passes=8, verbose=False).generate(x, np.random.default_rng(0))
    np.testing.assert_array_equal(x, before)
    assert res.fooling_rate > 0.8 and res.converged
    assert res.perturbation.shape == (3, 28, 28) and res.perturbation.dtype == np.float32
    assert lp_norm(res.perturbation, norm) <= xi * (1 + 1e-6)
    clean = clf.labels(x)
    assert np.mean(clf.labels(x, perturbation=res.perturbation) != clean) == pytest.approx(res.fooling_rate)


def test_uap_is_deterministic_and_resumes(clf, data, tmp_path):
    x = data[0][:100]
    kw = dict(norm="inf", xi=40.0, delta=0.0, verbose=False)
    full = UAP(clf, max_passes=2, **kw).generate(x, np.random.default_rng(7))
    again = UAP(clf, max_passes=2, **kw).generate(x, np.random.default_rng(7))
    np.testing.assert_array_equal(full.perturbation, again.perturbation)
    state = tmp_path / "uap.state.npz"
    first = UAP(clf, max_passes=1, state_path=state, **kw).generate(x, np.random.default_rng(7))
    assert first.n_iter == 1 and state.exists()
    resumed = UAP(clf, max_passes=2, state_path=state, **kw)
    with pytest.raises(ToolkitError, match="belongs to another run"):
        resumed.generate(x[:50], np.random.default_rng(7))
    out = resumed.generate(x, np.random.default_rng(123))  # RNG state comes from the file
    assert out.n_iter == 2 and out.history == full.history
    np.testing.assert_array_equal(out.perturbation, full.perturbation)


def test_uap_parameter_errors(clf):
    with pytest.raises(ValueError, match=r"delta must be in \[0, 1\)"):
        UAP(clf, delta=1.0)
    with pytest.raises(ValueError, match="max_passes must be a positive integer"):
        UAP(clf, max_passes=0)
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        UAP(clf, num_classes=1)
    with pytest.raises(ValueError, match="'foo' is not a parameter of uap"):
        UAP(clf).set_params(foo=1)


# ---------------------------------------------------------------- native attacks vs random noise
XI = 50.0  # pixel units; the tiny net needs more than ImageNet's 10 for data-free attacks to bite


@pytest.fixture(scope="module")
def random_noise_rate(clf, data):
    """Held-out fooling rate of uniform noise in [-XI, XI] (same l_inf norm), 5 draws."""
    held = data[1]
    clean = clf.labels(held)
    rates = [np.mean(clf.labels(held, perturbation=np.random.default_rng(s).uniform(-XI, XI, (3, 28, 28))
                                .astype(np.float32)) != clean) for s in range(5)]
    return float(np.mean(rates))


@pytest.mark.parametrize("make", [
    lambda c: SPGD(c, xi=XI, epochs=3, verbose=False),
    lambda c: FFF(c, xi=XI, max_iter=150, verbose=False),
    lambda c: GDUAP(c, xi=XI, prior="none", max_iter=150, verbose=False),
    lambda c: GDUAP(c, xi=XI, prior="range", batch_size=8, max_iter=80, lr=XI / 30, verbose=False),
    lambda c: GDUAP(c, xi=XI, prior="data", batch_size=16, max_iter=100, verbose=False),
    lambda c: SVUAP(c, xi=XI, layer="conv2", max_iter=15, n_images=32, verbose=False),
], ids=["spgd", "fff", "gduap-none", "gduap-range", "gduap-data", "svuap"])
def test_native_attack_beats_random_noise(clf, data, random_noise_rate, make):
    x, held, _ = data
    before = x.copy()
    attack = make(clf)
    res = attack.generate(x, np.random.default_rng(0))
    np.testing.assert_array_equal(x, before)
    assert lp_norm(res.perturbation, "inf") <= XI * (1 + 1e-6)
    rate = np.mean(clf.labels(held, perturbation=res.perturbation) != clf.labels(held))
    assert rate >= 2 * random_noise_rate, (attack.name, rate, random_noise_rate)


def test_data_free_attacks_need_no_data(clf):
    res = FFF(clf, xi=XI, max_iter=5, verbose=False).generate(None, np.random.default_rng(0))
    assert np.isnan(res.fooling_rate) and res.perturbation.shape == (3, 28, 28)
    with pytest.raises(ValueError, match="the data prior needs images"):
        GDUAP(clf, prior="data", max_iter=2, verbose=False).generate(None, np.random.default_rng(0))
    with pytest.raises(ValueError, match="prior must be one of none, range, data"):
        GDUAP(clf, prior="images")


# ---------------------------------------------------------------- CLI


def test_cli_uap_writes_perturbation_and_report(net_files, data, tmp_path):
    np.save(tmp_path / "x.npy", data[0][:120])
    out = tmp_path / "uap.h5"
    argv = ["uap", "--prototxt", str(net_files[0]), "--weights", str(net_files[1]), "--data",
            str(tmp_path / "x.npy"), "--mean", "128", "--xi", "40", "--max-passes", "2", "--seed", "1",
            "--out", str(out), "--quiet"]
    assert run_cli(cli_main, argv) == 0
    v, meta = load_perturbation(out)
    report = json.loads(out.with_suffix(".json").read_text())
    assert meta.attack == "uap" and meta.seed == 1 and meta.xi == 40.0 and meta.input_size == (28, 28)
    assert report["attack_data"]["n_images"] == 96 and report["heldout"]["n_images"] == 24
    assert report["attack_data"]["fooling_rate"] == pytest.approx(meta.fooling_rate)
    assert report["norms"]["linf"] <= 40.0 + 1e-4 and report["time_s"] > 0
    assert out.with_suffix(".state.npz").exists()


def test_cli_bad_input_exits_2(net_files, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 32, 32), np.float32))
    base = ["uap", "--prototxt", str(net_files[0]), "--weights", str(net_files[1]), "--out", str(tmp_path / "o.h5")]
    assert run_cli(cli_main, base + ["--data", str(tmp_path / "x.npy"), "--mean", "128"]) == 2
    assert "x.npy: images have shape (3, 32, 32) but the network takes (3, 28, 28)" in capsys.readouterr().err
    assert run_cli(cli_main, base + ["--data", str(tmp_path / "x.npy")]) == 2
    assert "give --mean B,G,R or --preset NAME" in capsys.readouterr().err
    np.save(tmp_path / "obj.npy", np.array([None], dtype=object), allow_pickle=True)
    assert run_cli(cli_main, base + ["--data", str(tmp_path / "obj.npy"), "--mean", "128"]) == 2
    assert "obj.npy: holds pickled (object) data" in capsys.readouterr().err


@pytest.mark.parametrize("command,extra", [
    ("spgd", ["--epochs", "1", "--norm", "2", "--xi", "1500"]),
    ("fff", ["--max-iter", "5", "--layers", "conv1", "conv2"]),
    ("gduap", ["--max-iter", "5", "--prior", "data"]),
    ("svuap", ["--max-iter", "2", "--n-images", "8", "--layer", "conv2"]),
])
def test_cli_native_attacks(net_files, data, tmp_path, command, extra):
    np.save(tmp_path / "x.npy", data[0][:40])
    out = tmp_path / f"{command}.h5"
    argv = [command, "--prototxt", str(net_files[0]), "--weights", str(net_files[1]), "--data",
            str(tmp_path / "x.npy"), "--preset", "CaffeNet", "--out", str(out), "--quiet", *extra]
    assert run_cli(cli_main, argv) == 0
    v, meta = load_perturbation(out)
    report = json.loads(out.with_suffix(".json").read_text())
    assert meta.attack == command and meta.network == "CaffeNet" and v.shape == (3, 28, 28)
    assert report["heldout"]["n_images"] == 8 and 0.0 <= report["heldout"]["fooling_rate"] <= 1.0
    bound = 1500.0 if command == "spgd" else 10.0
    assert report["norms"]["l2" if command == "spgd" else "linf"] <= bound * (1 + 1e-5)


def test_cli_help_exits_0(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["--help"])
    assert exc.value.code == 0
    assert "uap" in capsys.readouterr().out
