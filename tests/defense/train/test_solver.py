"""FRU training loop: frozen layers stay bit-identical, FRU layers learn, snapshots resume exactly."""
import signal

import numpy as np
import pytest

from defense.core import L, ToolkitError, caffe, load_blobs, net_param_text, run_cli, save_blobs
from defense.data import ArraySource
from defense.train import (EpochSampler, SolverWrapper, TrainOptions, check_solverstate, frozen_layers, mixed_batch,
                           read_solver_param, stack_perturbations, train)
from defense.train.__main__ import main

FROZEN = ("base_conv", "base_bn", "base_fc")
MEAN = (10.0,)


def tiny_train_net(batch=4, size=6, classes=3):
    """base_conv (frozen) -> base_bn (global stats) -> fru_conv (learns) -> ReLU -> base_fc (frozen) -> loss."""
    frozen = [dict(lr_mult=0, decay_mult=0)] * 2
    n = caffe.NetSpec()
    n.data = L.Input(name="data", input_param=dict(shape=dict(dim=[batch, 1, size, size])))
    n.label = L.Input(name="label", input_param=dict(shape=dict(dim=[batch])))
    n.base_conv = L.Convolution(n.data, name="base_conv", num_output=4, kernel_size=3, pad=1, param=frozen)
    n.base_bn = L.BatchNorm(n.base_conv, name="base_bn", use_global_stats=True, in_place=True)
    n.fru_conv = L.Convolution(n.base_bn, name="fru_conv", num_output=4, kernel_size=1,
                               param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=1, decay_mult=0)])
    n.relu = L.ReLU(n.fru_conv, name="relu", in_place=True)
    n.base_fc = L.InnerProduct(n.fru_conv, name="base_fc", num_output=classes, param=frozen)
    n.loss = L.SoftmaxWithLoss(n.base_fc, n.label, name="loss")
    return n.to_proto()


def init_blobs(size=6, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    return {"base_conv": [rng.normal(0, 0.1, (4, 1, 3, 3)).astype(np.float32), rng.normal(0, 0.1, 4).astype(np.float32)],
            "base_bn": [np.zeros(4, np.float32), np.ones(4, np.float32), np.ones(1, np.float32)],
            "fru_conv": [rng.normal(0, 0.3, (4, 4, 1, 1)).astype(np.float32), np.zeros(4, np.float32)],
            "base_fc": [rng.normal(0, 0.1, (classes, 4 * size * size)).astype(np.float32),
                        np.zeros(classes, np.float32)]}


@pytest.fixture
def setup(tmp_path):
    """Solver (net given by a path relative to the solver file), init weights, data, perturbations."""
    (tmp_path / "train.prototxt").write_text(net_param_text(tiny_train_net()))
    (tmp_path / "solver.prototxt").write_text(
        'net: "train.prototxt"\ntype: "SGD"\nbase_lr: 0.05\nmomentum: 0.9\nlr_policy: "fixed"\n'
        'max_iter: 6\nsnapshot: 0\nsnapshot_prefix: "ignored/fru"\n')
    init = save_blobs(tmp_path / "init.caffemodel", init_blobs())
    rng = np.random.default_rng(1)
    source = ArraySource(rng.uniform(0, 255, (10, 1, 6, 6)), rng.integers(0, 3, 10))
    perts = [rng.uniform(-20, 20, (1, 6, 6)).astype(np.float32) for _ in range(3)]
    return tmp_path, init, source, perts


def run(tmp, init, source, perts, out="snaps", resume=None, **opts):
    wrapper = SolverWrapper(tmp / "solver.prototxt", tmp / out, MEAN, weights=init if resume is None else None,
                            resume=resume, options=TrainOptions(progress=False, **opts), prefix="fru")
    return wrapper, wrapper.run(source, perts)


def test_fru_only_training_keeps_baseline_bit_identical(setup):
    tmp, init, source, perts = setup
    wrapper, result = run(tmp, init, source, perts)
    assert result.iterations == 6 and len(result.losses) == 6
    assert result.caffemodel.name == "fru_iter_6.caffemodel" and result.solverstate.is_file()
    before, after = load_blobs(init), load_blobs(result.caffemodel)
    assert sorted(wrapper.frozen) == sorted(FROZEN)
    for name in FROZEN:
        for a, b in zip(before[name], after[name]):
            np.testing.assert_array_equal(a, b)
    assert np.abs(after["fru_conv"][0] - before["fru_conv"][0]).max() > 1e-3


def test_resume_continues_at_the_right_iteration(setup):
    tmp, init, source, perts = setup
    _, straight = run(tmp, init, source, perts, out="a")
    _, first = run(tmp, init, source, perts, out="b", max_iter=3)
    assert first.solverstate.name == "fru_iter_3.solverstate"
    wrapper = SolverWrapper(tmp / "solver.prototxt", tmp / "b", MEAN, resume=first.solverstate,
                            options=TrainOptions(progress=False), prefix="fru")
    assert wrapper.iter == 3
    second = wrapper.run(source, perts)
    assert second.iterations == 6 and len(second.losses) == 3
    np.testing.assert_allclose(second.losses, straight.losses[3:], atol=1e-5)
    a, b = load_blobs(straight.caffemodel), load_blobs(second.caffemodel)
    np.testing.assert_allclose(b["fru_conv"][0], a["fru_conv"][0], atol=1e-6)


def test_ctrl_c_snapshots_then_stops(setup, monkeypatch):
    tmp, init, source, perts = setup
    wrapper = SolverWrapper(tmp / "solver.prototxt", tmp / "s", MEAN, weights=init,
                            options=TrainOptions(progress=False), prefix="fru")
    step = wrapper.step

    def step_then_interrupt(x, y):
        loss = step(x, y)
        if wrapper.iter == 2:
            signal.raise_signal(signal.SIGINT)
        return loss

    monkeypatch.setattr(wrapper, "step", step_then_interrupt)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where pytest runs as a background job
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(KeyboardInterrupt):
        wrapper.run(source, perts)
    assert (tmp / "s" / "fru_iter_2.caffemodel").is_file()
    assert check_solverstate(tmp / "s" / "fru_iter_2.solverstate")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signal.signal(signal.SIGINT, before)


def test_snapshot_every(setup):
    tmp, init, source, perts = setup
    run(tmp, init, source, perts, out="e", snapshot_every=2)
    assert sorted(p.name for p in (tmp / "e").glob("*.caffemodel")) == [
        "fru_iter_2.caffemodel", "fru_iter_4.caffemodel", "fru_iter_6.caffemodel"]


def test_mixed_batch_half_clean_half_perturbed():
    x = np.arange(8 * 4, dtype=np.float32).reshape(8, 1, 2, 2)
    source = ArraySource(x, np.arange(8))
    perts = stack_perturbations([np.full((1, 2, 2), 100.0), np.full((1, 2, 2), -50.0)], (1, 2, 2))
    sampler = EpochSampler(8, seed=3)
    xb, yb, which = mixed_batch(source, perts, sampler, 6, iteration=1, options=TrainOptions(seed=3))
    clean = source.take(yb)[0]
    assert which[:3].tolist() == [-1, -1, -1] and set(which[3:].tolist()) <= {0, 1}
    np.testing.assert_array_equal(xb[:3], clean[:3])
    np.testing.assert_array_equal(xb[3:], clean[3:] + perts[which[3:]])
    again = mixed_batch(source, perts, EpochSampler(8, seed=3), 6, iteration=1, options=TrainOptions(seed=3))
    np.testing.assert_array_equal(again[0], xb)
    all_clean = mixed_batch(source, perts, sampler, 6, 1, TrainOptions(seed=3, clean_fraction=1.0))[2]
    assert (all_clean == -1).all()


def test_epoch_sampler_visits_every_image_once_per_epoch():
    sampler = EpochSampler(5, seed=0)
    idx = sampler.indices(0, 10)
    assert sorted(idx[:5].tolist()) == list(range(5)) and sorted(idx[5:].tolist()) == list(range(5))
    np.testing.assert_array_equal(sampler.indices(3, 4), idx[3:7])


def test_frozen_layers_rule():
    assert frozen_layers(tiny_train_net()) == list(FROZEN)


def test_check_frozen_detects_a_change(setup):
    tmp, init, source, perts = setup
    wrapper = SolverWrapper(tmp / "solver.prototxt", tmp / "c", MEAN, weights=init, options=TrainOptions(progress=False))
    wrapper.solver.net.params["base_fc"][1].data[0] += 1.0
    with pytest.raises(ToolkitError, match="frozen layers changed during training: base_fc; .*lr_mult 0"):
        wrapper.check_frozen()


def test_train_writes_final_weights(setup):
    tmp, init, source, perts = setup
    out = train(tmp / "solver.prototxt", source, perts, tmp / "w" / "fru.caffemodel", MEAN, weights=init,
                options=TrainOptions(progress=False, max_iter=2))
    assert out.is_file() and (tmp / "w" / "fru_snapshots" / "fru_iter_2.caffemodel").is_file()
    assert sorted(load_blobs(out)) == sorted(init_blobs())


def test_cli_trains_on_fashion_mnist_shapes(tmp_path, capsys):
    pytest.importorskip("defense.data").FashionMnist("train")
    (tmp_path / "train.prototxt").write_text(net_param_text(tiny_train_net(batch=4, size=28, classes=10)))
    (tmp_path / "solver.prototxt").write_text('net: "train.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 2\n')
    save_blobs(tmp_path / "init.caffemodel", init_blobs(size=28, classes=10))
    np.save(tmp_path / "v.npy", np.full((1, 28, 28), 5.0, np.float32))
    code = main(["--net", "FashionNet", "--dir", str(tmp_path), "--perturbations", str(tmp_path / "v.npy"),
                 "--out", str(tmp_path / "fru.caffemodel"), "--quiet"])
    assert code == 0 and (tmp_path / "fru.caffemodel").is_file()
    assert (tmp_path / "fru_snapshots" / "fru_iter_2.solverstate").is_file()


def test_cli_missing_solver_is_one_line(tmp_path, capsys):
    np.save(tmp_path / "v.npy", np.zeros((1, 28, 28), np.float32))
    code = run_cli(main, ["--net", "FashionNet", "--solver", str(tmp_path / "nope.prototxt"),
                          "--perturbations", str(tmp_path / "v.npy"), "--out", str(tmp_path / "o.caffemodel")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "nope.prototxt: solver prototxt not found; generate it with 'python -m defense.generate'" in err


def test_bad_solver_text(tmp_path):
    (tmp_path / "s.prototxt").write_text("base_lr: [")
    with pytest.raises(ToolkitError, match=r"s.prototxt: not a valid Caffe solver prototxt"):
        read_solver_param(tmp_path / "s.prototxt")


def test_solver_without_net(tmp_path):
    (tmp_path / "s.prototxt").write_text("base_lr: 0.1\n")
    with pytest.raises(ToolkitError, match=r"s.prototxt: solver names no train net"):
        read_solver_param(tmp_path / "s.prototxt")


@pytest.mark.parametrize("text,message", [
    ('net: "train.prototxt"\n', r"s.prototxt: lr_policy '' is not one of fixed, step"),
    ('net: "train.prototxt"\nlr_policy: "step"\n', r"s.prototxt: lr_policy 'step' needs a positive stepsize"),
    ('net: "train.prototxt"\nlr_policy: "fixed"\ntype: "Sgd"\n', r"s.prototxt: unknown solver type 'Sgd'"),
    ('net: "train.prototxt"\nlr_policy: "fixed"\niter_size: 2\n', r"s.prototxt: iter_size must be 1"),
    ('net: "train.prototxt"\nlr_policy: "fixed"\nbase_lr: nan\n', r"s.prototxt: base_lr must be a finite number >= 0, got nan"),
    ('net: "train.prototxt"\nlr_policy: "fixed"\nbase_lr: inf\n', r"s.prototxt: base_lr must be a finite number >= 0, got inf"),
    ('net: "train.prototxt"\nlr_policy: "fixed"\nbase_lr: 0.1\nmomentum: -0.9\n', r"s.prototxt: momentum must be a finite"),
])
def test_solver_fields_caffe_would_abort_on(tmp_path, text, message):
    (tmp_path / "train.prototxt").write_text(net_param_text(tiny_train_net()))
    (tmp_path / "s.prototxt").write_text(text)
    with pytest.raises(ToolkitError, match=message):
        read_solver_param(tmp_path / "s.prototxt")


def test_missing_solverstate(tmp_path):
    with pytest.raises(ToolkitError, match=r"x.solverstate: solverstate not found"):
        check_solverstate(tmp_path / "x.solverstate")


def test_corrupt_solverstate(tmp_path):
    (tmp_path / "x.solverstate").write_bytes(b"\xff\xff\xff")
    with pytest.raises(ToolkitError, match=r"x.solverstate: not a valid solverstate"):
        check_solverstate(tmp_path / "x.solverstate")


def test_solverstate_without_its_weights(setup):
    tmp, init, source, perts = setup
    _, result = run(tmp, init, source, perts, out="m", max_iter=1)
    result.caffemodel.unlink()
    with pytest.raises(ToolkitError, match=r"its weights .*fru_iter_1.caffemodel are missing"):
        check_solverstate(result.solverstate)


def test_net_without_label_blob(tmp_path):
    net = tiny_train_net()
    net.layer[1].top[0] = "labels"
    net.layer[-1].bottom[1] = "labels"
    (tmp_path / "train.prototxt").write_text(net_param_text(net))
    (tmp_path / "solver.prototxt").write_text('net: "train.prototxt"\nlr_policy: "fixed"\nmax_iter: 1\n')
    with pytest.raises(ToolkitError, match=r"train net has no blob 'label'"):
        SolverWrapper(tmp_path / "solver.prototxt", tmp_path / "o", MEAN)


def test_perturbation_shape_mismatch():
    with pytest.raises(ValueError, match=r"perturbation 1 has shape \(1, 5, 5\), the images \(1, 6, 6\)"):
        stack_perturbations([np.zeros((1, 6, 6)), np.zeros((1, 5, 5))], (1, 6, 6))


def test_perturbed_training_needs_perturbations(setup):
    tmp, init, source, _ = setup
    with pytest.raises(ValueError, match="training with perturbed images needs at least one perturbation"):
        run(tmp, init, source, [])


def test_options_validation():
    with pytest.raises(ValueError, match=r"clean_fraction must be in \[0, 1\], got 1.5"):
        TrainOptions(clean_fraction=1.5)
    with pytest.raises(ValueError, match="max_iter must be a positive integer, got 0"):
        TrainOptions(max_iter=0)


def test_labels_outside_the_net_classes_are_refused(tmp_path, capsys):
    """Fashion-MNIST's 10 labels on a 3-class net would make Caffe read past its scores."""
    (tmp_path / "train.prototxt").write_text(net_param_text(tiny_train_net(batch=4, size=28)))
    (tmp_path / "solver.prototxt").write_text('net: "train.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 2\n')
    save_blobs(tmp_path / "init.caffemodel", init_blobs(size=28))
    np.save(tmp_path / "v.npy", np.full((1, 28, 28), 5.0, np.float32))
    code = run_cli(main, ["--net", "FashionNet", "--dir", str(tmp_path), "--perturbations", str(tmp_path / "v.npy"),
                          "--out", str(tmp_path / "fru.caffemodel"), "--quiet"])
    assert code == 2
    assert "labels must lie in [0, 3) for this net" in capsys.readouterr().err


def test_a_diverging_run_stops_with_one_line_naming_its_last_good_snapshot(setup, monkeypatch):
    """The loss turns NaN at iteration 4 (as an overflowing learning rate makes it): the run stops
    there, writes no snapshot of the broken weights, and names the last good one."""
    tmp, init, source, perts = setup
    step = SolverWrapper.step

    def diverging(self, x, y):
        loss = step(self, x, y)
        return float("nan") if self.iter >= 4 else loss

    monkeypatch.setattr(SolverWrapper, "step", diverging)
    with pytest.raises(ToolkitError) as err:
        run(tmp, init, source, perts, snapshot_every=1)
    good = tmp / "snaps" / "fru_iter_3.solverstate"
    assert str(err.value) == (f"training diverged (loss nan) at iteration 4; the last good snapshot is {good}; "
                              "lower the learning rate")
    assert good.is_file() and not (tmp / "snaps" / "fru_iter_4.caffemodel").exists()
