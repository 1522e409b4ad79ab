"""GAP and NAG (attacks.gap, attacks.nag): losses against numpy references, fooling rates on the
tiny Fashion-MNIST net, exact resume after Ctrl-C, the command line, and the published files."""
import json
import shutil
import signal

import numpy as np
import pytest

from attack_fixtures import MEAN, fashion_subset, trained_tiny_net
from attacks import GAP, NAG, CaffeClassifier, make_attack
from attacks.__main__ import main as cli_main
from attacks.gap import gap_loss
from attacks.generative import record_path
from attacks.nag import diversity_loss, fooling_loss, partners, upsampling_plan
from attacks.perturbation_io import load_any, load_perturbation
from attacks.projection import lp_norm
from defense.core import ToolkitError, caffe, caffe_pb2, net_param_text, run_cli

XI = 50.0  # pixel units, as the other native attacks' tests on this net


@pytest.fixture(scope="module")
def tiny():
    """The tiny net's files, its classifier, and 250 attack plus 250 held-out test images."""
    files, (x, _) = trained_tiny_net(), fashion_subset("test", 500)
    return files, CaffeClassifier.from_files(*files, MEAN, batch_size=50), (x[:250], x[250:])


@pytest.fixture(scope="module")
def clf(tiny):
    return tiny[1]


@pytest.fixture(scope="module")
def data(tiny):
    return tiny[2]


@pytest.fixture
def sigint():
    """Ctrl-C raises KeyboardInterrupt (pytest run as a background job ignores SIGINT)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


# ---------------------------------------------------------------- losses against numpy references
def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _numeric_gradient(f, z, eps=1e-6):
    g = np.zeros_like(z)
    for idx in np.ndindex(*z.shape):
        d = np.zeros_like(z)
        d[idx] = eps
        g[idx] = (f(z + d) - f(z - d)) / (2 * eps)
    return g


def test_diversity_loss_and_gradient_match_a_numpy_reference():
    rng = np.random.default_rng(0)
    f1, f2 = rng.normal(size=(4, 3, 2, 2)), rng.normal(size=(4, 3, 2, 2))

    def reference(a, b, weight=10.0):  # the released code: -10 * mean of squared differences, pair by pair
        total = sum(((a[i] - b[i]) ** 2).sum() for i in range(len(a)))
        return -weight * total / a.size

    value, d1, d2 = diversity_loss(f1, f2, 10.0)
    assert value == pytest.approx(reference(f1, f2), rel=1e-12)
    np.testing.assert_allclose(d1, _numeric_gradient(lambda a: reference(a, f2), f1), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(d2, _numeric_gradient(lambda b: reference(f1, b), f2), rtol=1e-6, atol=1e-9)
    assert diversity_loss(f1, f1, 10.0)[0] == 0.0


def test_fooling_and_gap_losses_match_numpy_references():
    rng = np.random.default_rng(1)
    z, labels = rng.normal(size=(5, 4)) * 3, np.array([0, 3, 1, 1, 2])

    def nag_reference(logits):
        return -np.log(1 - np.mean(_softmax(logits)[np.arange(5), labels]))

    value, grad = fooling_loss(z, labels)
    assert value == pytest.approx(nag_reference(z), rel=1e-12)
    np.testing.assert_allclose(grad, _numeric_gradient(nag_reference, z), rtol=1e-6, atol=1e-9)
    references = {"least_likely": lambda lg: np.log(-np.mean(np.log(_softmax(lg)[np.arange(5), labels]))),
                  "clean": lambda lg: np.mean(np.log(_softmax(lg)[np.arange(5), labels]))}
    for kind, reference in references.items():
        value, grad = gap_loss(z, labels, kind)
        assert value == pytest.approx(reference(z), rel=1e-12), kind
        np.testing.assert_allclose(grad, _numeric_gradient(reference, z), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="loss must be one of clean, least_likely, got 'other'"):
        gap_loss(z, labels, "other")


def test_partners_never_pair_a_latent_with_itself():
    for n in (2, 3, 32):
        j = partners(n, np.random.default_rng(n))
        assert sorted(j) == list(range(n)) and np.all(j != np.arange(n))


def test_nag_gradient_through_the_classifier_matches_finite_differences(clf, data):
    """The gradient the loop feeds the generator: fooling + diversity loss, chained through Caffe."""
    attack = NAG(clf, xi=XI, batch_size=4, layer="conv2", verbose=False)
    x = data[0][:4]
    targets = clf.labels(x)
    v = np.random.default_rng(3).uniform(-XI, XI, (4, 3, 28, 28)).astype(np.float32)

    def loss(w):
        return attack._loss_and_gradient(x, targets, w, np.random.default_rng(5))

    value, grad = loss(v)
    direction = np.random.default_rng(4).normal(size=v.shape).astype(np.float32)
    eps = 0.05
    numeric = (loss(v + eps * direction)[0] - loss(v - eps * direction)[0]) / (2 * eps)
    analytic = float((grad.astype(np.float64) * direction).sum())
    assert abs(numeric - analytic) <= 0.02 * max(abs(numeric), abs(analytic))
    pair = partners(4, np.random.default_rng(5))
    features = clf.forward_batch(np.concatenate([x + v, x + v[pair]]), ["conv2"])["conv2"]
    div = diversity_loss(features[:4], features[4:], 10.0)[0]
    assert div < 0 and value == pytest.approx(div + fooling_loss(clf.logits(x + v), targets)[0], rel=1e-5)


# ---------------------------------------------------------------- the generators
class _Shape:
    """Just what the generator builders read of a classifier."""

    def __init__(self, shape):
        self.input_shape = shape

    def producer(self, blob):
        return 0


@pytest.mark.parametrize("cls,kw", [(GAP, dict(ngf=2, blocks=1)), (NAG, dict(ngf=2, layer="x", batch_size=2))],
                         ids=["gap", "nag"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 224, 224), (3, 227, 227)])
def test_generators_make_the_input_shape(cls, kw, shape, tmp_path):
    param = cls(_Shape(shape), verbose=False, **kw).train_net()
    path = tmp_path / "gen.prototxt"
    path.write_text(net_param_text(param))
    net = caffe.Net(str(path), caffe.TRAIN)
    assert net.blobs["generated"].data.shape[1:] == shape
    assert ("g_crop" in net.blobs) == (shape[1] == 227)


def test_paper_shapes_at_224():
    gap = GAP(_Shape((3, 224, 224)), verbose=False)
    nag = NAG(_Shape((3, 224, 224)), layer="x", verbose=False)
    assert (gap.ngf, gap.blocks, nag.ngf, nag.latent_dim) == (64, 6, 64, 100)
    assert upsampling_plan((224, 224)) == (5, (7, 7)) and upsampling_plan((28, 28)) == (2, (7, 7))
    layers = {layer.name: layer for layer in nag.train_net().layer}
    assert layers["g_fc"].inner_product_param.num_output == 1024 * 7 * 7
    assert [layers[f"g_up{k}"].convolution_param.num_output for k in range(1, 6)] == [512, 256, 128, 64, 3]
    assert sum(layer.type == "Eltwise" for layer in gap.train_net().layer) == 6 + 1  # blocks, then u * grad


# ---------------------------------------------------------------- attacks
@pytest.fixture(scope="module")
def random_noise_rate(clf, data):
    """Held-out fooling rate of uniform noise in [-XI, XI] (same l_inf norm), 5 draws."""
    held = data[1]
    clean = clf.labels(held)
    return float(np.mean([np.mean(clf.labels(held, perturbation=np.random.default_rng(s).uniform(
        -XI, XI, (3, 28, 28)).astype(np.float32)) != clean) for s in range(5)]))


@pytest.mark.parametrize("make", [
    lambda c: GAP(c, xi=XI, max_iter=30, verbose=False),
    lambda c: GAP(c, xi=XI, max_iter=30, loss="least_likely", verbose=False),
    lambda c: NAG(c, xi=XI, max_iter=40, batch_size=16, lr=0.02, verbose=False),
], ids=["gap", "gap-least-likely", "nag"])
def test_generative_attack_beats_random_noise(clf, data, random_noise_rate, make):
    x, held = data
    before = x.copy()
    attack = make(clf)
    res = attack.generate(x, np.random.default_rng(0))
    np.testing.assert_array_equal(x, before)
    assert lp_norm(res.perturbation, "inf") == pytest.approx(XI, rel=1e-6) and res.n_iter == attack.max_iter
    assert len(res.history) == attack.max_iter and res.history[-1] < res.history[0]
    rate = np.mean(clf.labels(held, perturbation=res.perturbation) != clf.labels(held))
    print(attack.name, rate, random_noise_rate)
    assert random_noise_rate < 0.1 and rate >= 2 * random_noise_rate, (attack.name, rate, random_noise_rate)


def test_nag_samples_are_diverse_perturbations_of_the_budget(clf, data):
    attack = NAG(clf, norm="2", xi=700.0, max_iter=3, batch_size=4, verbose=False)
    attack.generate(data[0][:40], np.random.default_rng(0))
    samples = attack.sample(6, np.random.default_rng(1))
    assert samples.shape == (6, 3, 28, 28)
    np.testing.assert_allclose([lp_norm(s, "2") for s in samples], 700.0, rtol=1e-5)
    assert min(np.abs(samples[i] - samples[j]).max() for i in range(6) for j in range(i)) > 1.0
    np.testing.assert_array_equal(samples, attack.sample(6, np.random.default_rng(1)))


def _interrupt_at(attack, call):
    """Press Ctrl-C (a real SIGINT) during the ``call``-th iteration."""
    inner, calls = attack._loss_and_gradient, []

    def then_interrupt(*args):
        calls.append(1)
        if len(calls) == call:
            signal.raise_signal(signal.SIGINT)
        return inner(*args)

    attack._loss_and_gradient = then_interrupt


@pytest.mark.parametrize("name,kw", [("gap", {}), ("nag", dict(batch_size=4))])
def test_ctrl_c_then_resume_is_byte_identical(clf, data, tmp_path, sigint, name, kw):
    x = data[0][:60]

    def attack(folder, **more):
        return make_attack(name, clf, xi=XI, max_iter=5, snapshot_dir=str(tmp_path / folder), verbose=False,
                           **kw, **more)

    straight = attack("a").generate(x, np.random.default_rng(7))
    first = attack("b")
    _interrupt_at(first, 2)
    with pytest.raises(KeyboardInterrupt):
        first.generate(x, np.random.default_rng(7))
    state = tmp_path / "b" / f"{name}_iter_2.solverstate"
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(
        f"{name}_iter_2{s}" for s in (".attack.json", ".caffemodel", ".solverstate"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    resumed = attack("b", resume=str(state)).generate(x, np.random.default_rng(7))
    a, b = tmp_path / "a" / f"{name}_iter_5", tmp_path / "b" / f"{name}_iter_5"
    assert a.with_suffix(".caffemodel").read_bytes() == b.with_suffix(".caffemodel").read_bytes()
    sa, sb = (caffe_pb2.SolverState.FromString(p.with_suffix(".solverstate").read_bytes()) for p in (a, b))
    assert sa.iter == sb.iter == 5 and len(sa.history) > 0
    assert all(np.array_equal(h.data, k.data) for h, k in zip(sa.history, sb.history, strict=True))
    np.testing.assert_array_equal(straight.perturbation, resumed.perturbation)
    assert resumed.history == straight.history

    with pytest.raises(ToolkitError, match=f"{state}: written by a run with seed"):
        attack("c", resume=str(state)).generate(x, np.random.default_rng(8))
    with pytest.raises(ToolkitError, match=f"{state}: written by a run with images"):
        attack("c", resume=str(state)).generate(x[:50], np.random.default_rng(7))
    record_path(state).unlink()
    with pytest.raises(ToolkitError, match="its record .* is missing or unreadable"):
        attack("c", resume=str(state)).generate(x, np.random.default_rng(7))


def test_parameter_errors(clf, data, tmp_path):
    with pytest.raises(ValueError, match="batch_size must be at least 2 for nag, got 1"):
        NAG(clf, batch_size=1)
    with pytest.raises(ToolkitError, match="the network has no blob 'nosuch'"):
        NAG(clf, layer="nosuch")
    with pytest.raises(ValueError, match="loss must be one of clean, least_likely"):
        GAP(clf, loss="targeted")
    with pytest.raises(ValueError, match="beta1 must be in \\(0, 1\\), got 1.0"):
        GAP(clf, beta1=1.0)
    with pytest.raises(ValueError, match="snapshot_every must be 0 or a positive integer, got -1"):
        GAP(clf, snapshot_every=-1)
    with pytest.raises(ToolkitError, match="nope.solverstate: solverstate not found"):
        GAP(clf, resume=str(tmp_path / "nope.solverstate"))
    with pytest.raises(ValueError, match="gap trains on images: give --data"):
        GAP(clf, max_iter=1, verbose=False).generate(None, np.random.default_rng(0))
    (tmp_path / "junk.solverstate").write_bytes(b"\x00junk")
    with pytest.raises(ToolkitError, match="junk.solverstate: not a valid solverstate"):
        GAP(clf, max_iter=1, resume=str(tmp_path / "junk.solverstate"), verbose=False).generate(
            data[0][:8], np.random.default_rng(0))


# ---------------------------------------------------------------- command line
@pytest.mark.parametrize("command,extra", [
    ("gap", ["--max-iter", "3", "--norm", "2", "--xi", "700", "--loss", "least_likely"]),
    ("nag", ["--max-iter", "3", "--samples", "3", "--layer", "conv1", "--diversity-weight", "1"]),
])
def test_cli_generative_attacks(tiny, data, tmp_path, command, extra):
    net_files = tiny[0]
    np.save(tmp_path / "x.npy", data[0][:40])
    out = tmp_path / f"{command}.h5"
    argv = [command, "--prototxt", str(net_files[0]), "--weights", str(net_files[1]), "--data",
            str(tmp_path / "x.npy"), "--mean", "128", "--batch-size", "8", "--seed", "3", "--out", str(out),
            "--quiet", *extra]
    assert run_cli(cli_main, argv) == 0
    v, meta = load_perturbation(out)
    report = json.loads(out.with_suffix(".json").read_text())
    assert meta.attack == command and meta.seed == 3 and report["n_iter"] == 3 and len(report["history"]) == 3
    assert (tmp_path / f"{command}.snapshots" / f"{command}_iter_3.solverstate").is_file()
    if command == "gap":
        assert v.shape == (3, 28, 28) and meta.norm == "2" and lp_norm(v, "2") == pytest.approx(700, rel=1e-5)
    else:
        assert v.shape == (3, 3, 28, 28) and len(report["heldout"]["per_sample"]) == 3
        assert meta.attack_params["layer"] == "conv1" and np.abs(v).max() == pytest.approx(10.0, rel=1e-5)


# ---------------------------------------------------------------- published files
@pytest.mark.slow
def test_generated_and_published_files_are_interchangeable(reference, tmp_path):
    """A published NAG/GAP file and one computed here (224x224, on the fake ImageNet's net) load through
    the same loader into the same (3,224,224) BGR pixel-unit arrays and run through the same commands."""
    from defense.tables import main as tables_main
    from fake_imagenet import write_images, write_nets
    root = tmp_path / "fake"
    manifest, index = write_nets(root), write_images(root)
    net = ["--prototxt", str(root / "prototxt/CaffeNet/deploy_caffenet.prototxt"), "--weights",
           str(root / "weights/CaffeNet/caffenet.caffemodel"), "--preset", "CaffeNet"]
    np.save(tmp_path / "x.npy", np.random.default_rng(0).uniform(0, 255, (6, 3, 224, 224)).astype(np.float32))
    common = ["--data", str(tmp_path / "x.npy"), "--max-iter", "2", "--batch-size", "2", "--ngf", "2", "--quiet"]
    files = {"gen_nag": ["nag", *net, *common, "--layer", "pool", "--latent-dim", "4"],
             "gen_gap": ["gap", *net, *common, "--blocks", "1"]}
    for name, argv in files.items():
        assert run_cli(cli_main, [*argv, "--out", str(tmp_path / f"{name}.h5")]) == 0
    samples = reference / "attack_samples"
    published = {"nag": samples / "NAG/perturbation19.npy", "gap": samples / "GAP/res152_guided_GAP_epoch_10.h5"}
    for fmt, path in published.items():
        assert run_cli(cli_main, ["convert", "--format", fmt, "--input", str(path), "--out",
                                  str(tmp_path / f"pub_{fmt}.h5"), "--quiet"]) == 0
    paths = [tmp_path / f"{name}.h5" for name in ("pub_nag", "gen_nag", "pub_gap", "gen_gap")]
    for path in paths:
        v = load_any(path, expect=(3, 224, 224))
        assert v.dtype == np.float32 and load_perturbation(path)[1].channel_order == "BGR"
    for fmt, path in published.items():
        np.testing.assert_array_equal(load_any(path, fmt), load_any(tmp_path / f"pub_{fmt}.h5"))
    assert np.abs(load_any(paths[1])).max() == pytest.approx(10.0) == np.abs(load_any(paths[0])).max()

    out = tmp_path / "tables"
    assert tables_main(["unseen", "--net", "CaffeNet", "--index", str(index), "--manifest", str(manifest),
                        "--own", *map(str, paths), "--out", str(out), "--quiet", "--workers", "1"]) == 0
    (case,) = json.loads((out / "unseen_CaffeNet.json").read_text())["cases"]
    assert case["key"] == "own" and 0.0 <= case["results"]["baseline"]["perturbed_top1"] <= 1.0
    shutil.rmtree(out)
    assert run_cli(cli_main, ["synthetic", "--inputs", *map(str, paths), "--count", "2", "--out",
                              str(tmp_path / "mix.h5"), "--quiet"]) == 0
    assert load_perturbation(tmp_path / "mix.h5")[0].shape == (2, 3, 224, 224)
