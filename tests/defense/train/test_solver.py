"""FRU training loop: frozen layers stay bit-identical, FRU layers learn, snapshots resume exactly."""
import json
import signal

import numpy as np
import pytest
from fru_nets import random_weights

from defense.core import L, ToolkitError, caffe, caffe_pb2, load_blobs, net_param_text, run_cli, save_blobs
from defense.data import ArraySource
from defense.generate import build_fru, write_outputs
from defense.networks import fashionnet
from defense.presets import get_preset
from defense.train import (EpochSampler, SolverWrapper, TrainOptions, check_solverstate, frozen_layers, mixed_batch,
                           read_solver_param, stack_perturbations, train)
from defense.train.__main__ import main
from defense.train.solver import record_path

FROZEN = ("base_conv", "base_bn", "base_fc")
MEAN = (10.0,)


def tiny_train_net(batch=4, size=6, classes=3):
    """base_conv (frozen) -> base_bn (global stats) -> fru_conv (learns) -> ReLU -> Dropout -> base_fc (frozen)
    -> loss; Dropout as in FashionNet's and CaffeNet's FRU train nets (it draws from Caffe's RNG)."""
    frozen = [dict(lr_mult=0, decay_mult=0)] * 2
    n = caffe.NetSpec()
    n.data = L.Input(name="data", input_param=dict(shape=dict(dim=[batch, 1, size, size])))
    n.label = L.Input(name="label", input_param=dict(shape=dict(dim=[batch])))
    n.base_conv = L.Convolution(n.data, name="base_conv", num_output=4, kernel_size=3, pad=1, param=frozen)
    n.base_bn = L.BatchNorm(n.base_conv, name="base_bn", use_global_stats=True, in_place=True)
    n.fru_conv = L.Convolution(n.base_bn, name="fru_conv", num_output=4, kernel_size=1,
                               param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=1, decay_mult=0)])
    n.relu = L.ReLU(n.fru_conv, name="relu", in_place=True)
    n.drop = L.Dropout(n.fru_conv, name="drop", dropout_ratio=0.5, in_place=True)
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


def run(tmp, init, source, perts, out="snaps", resume=None, solver="solver.prototxt", mean=MEAN, **opts):
    wrapper = SolverWrapper(tmp / solver, tmp / out, mean, weights=init if resume is None else None,
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


@pytest.fixture
def sigint():
    """Ctrl-C raises KeyboardInterrupt (pytest run as a background job ignores SIGINT)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def stop_after(wrapper, iteration):
    """Press Ctrl-C (a real SIGINT) during ``iteration``."""
    step = wrapper.step

    def step_then_interrupt(x, y):
        loss = step(x, y)
        if wrapper.iter == iteration:
            signal.raise_signal(signal.SIGINT)
        return loss

    wrapper.step = step_then_interrupt


def interrupted_then_resumed(tmp, init, source, perts, at, out="b", solver="solver.prototxt", mean=MEAN, **opts):
    """Train from ``init``, Ctrl-C during iteration ``at``, then resume from its snapshot to the end."""
    options = TrainOptions(progress=False, **opts)
    first = SolverWrapper(tmp / solver, tmp / out, mean, weights=init, options=options, prefix="fru")
    stop_after(first, at)
    with pytest.raises(KeyboardInterrupt):
        first.run(source, perts)
    resumed = SolverWrapper(tmp / solver, tmp / out, mean, resume=tmp / out / f"fru_iter_{at}.solverstate",
                            options=options, prefix="fru")
    assert resumed.iter == at
    return resumed.run(source, perts)


def solverstate(path):
    state = caffe_pb2.SolverState()
    state.ParseFromString(path.read_bytes())
    return state


def assert_same_run(straight, resumed):
    """Same iteration and schedule step, same caffemodel bytes, every weight and history blob equal."""
    assert resumed.iterations == straight.iterations
    assert resumed.caffemodel.read_bytes() == straight.caffemodel.read_bytes()
    a, b = load_blobs(straight.caffemodel), load_blobs(resumed.caffemodel)
    assert sorted(a) == sorted(b)
    assert all(np.array_equal(x, y) for name in a for x, y in zip(a[name], b[name], strict=True))
    sa, sb = solverstate(straight.solverstate), solverstate(resumed.solverstate)
    assert (sb.iter, sb.current_step) == (sa.iter, sa.current_step) and sa.iter == straight.iterations
    assert len(sa.history) == len(sb.history) > 0
    assert all(np.array_equal(x.data, y.data) for x, y in zip(sa.history, sb.history))


@pytest.mark.parametrize("solver,steps", [
    ('type: "SGD"\nbase_lr: 0.05\nmomentum: 0.9\nweight_decay: 0.001\nlr_policy: "step"\nstepsize: 2\ngamma: 0.5\n', 3),
    ('type: "Adam"\nbase_lr: 0.01\nmomentum: 0.9\nmomentum2: 0.999\nlr_policy: "multistep"\nstepvalue: 4\n'
     'gamma: 0.1\n', 1),
], ids=["SGD-step", "Adam-multistep"])
def test_ctrl_c_then_resume_is_byte_identical_to_an_uninterrupted_run(setup, sigint, solver, steps):
    """Dropout masks, momentum/Adam history and the learning-rate schedule all carry over the interruption."""
    tmp, init, source, perts = setup
    (tmp / "s.prototxt").write_text(f'net: "train.prototxt"\n{solver}max_iter: 7\n')
    _, straight = run(tmp, init, source, perts, out="a", solver="s.prototxt")
    resumed = interrupted_then_resumed(tmp, init, source, perts, at=3, solver="s.prototxt")
    assert len(resumed.losses) == 4 and solverstate(resumed.solverstate).current_step == steps
    assert_same_run(straight, resumed)


def test_fashionnet_fru_resume_is_byte_identical(tmp_path, sigint):
    """The generated FashionNet FRU train net (its fc4 Dropout included), interrupted at 2 of 5 iterations."""
    preset = get_preset("FashionNet")
    base = fashionnet.build(preset)
    build = build_fru(base, preset.targets, preset.mode, batch_size=4, source="FashionNet")
    assert "Dropout" in [layer.type for layer in build.train.layer]
    write_outputs(build, tmp_path, "test", base, random_weights(base), source="FashionNet")
    rng = np.random.default_rng(2)
    source = ArraySource(rng.uniform(0, 255, (12, 1, 28, 28)), rng.integers(0, 10, 12))
    perts = [rng.uniform(-50, 50, (1, 28, 28)).astype(np.float32) for _ in range(2)]
    init, opts = tmp_path / "init.caffemodel", dict(mean=preset.mean_bgr, max_iter=5, snapshot_every=0)
    _, straight = run(tmp_path, init, source, perts, out="a", **opts)
    assert_same_run(straight, interrupted_then_resumed(tmp_path, init, source, perts, at=2, **opts))


def test_ctrl_c_snapshots_then_stops(setup, sigint):
    tmp, init, source, perts = setup
    wrapper = SolverWrapper(tmp / "solver.prototxt", tmp / "s", MEAN, weights=init,
                            options=TrainOptions(progress=False), prefix="fru")
    stop_after(wrapper, 2)
    with pytest.raises(KeyboardInterrupt):
        wrapper.run(source, perts)
    assert (tmp / "s" / "fru_iter_2.caffemodel").is_file()
    assert check_solverstate(tmp / "s" / "fru_iter_2.solverstate")
    assert json.loads(record_path(tmp / "s" / "fru_iter_2.solverstate").read_text())["seed"] == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("change,message", [
    (dict(seed=1), "written by a run with seed 0, this one has 1; resume with that run's options and data"),
    (dict(clean_fraction=0.25), "written by a run with clean_fraction 0.5, this one has 0.25"),
    (dict(perturbations=1), "written by a run with perturbations '[0-9a-f]{16}', this one has '[0-9a-f]{16}'"),
    (dict(images=9), "written by a run with images 10, this one has 9"),
])
def test_resume_refuses_a_run_that_would_draw_other_batches(setup, change, message):
    """The seed, data and perturbations decide every later batch and Dropout mask: a resume must match them."""
    tmp, init, source, perts = setup
    _, first = run(tmp, init, source, perts, max_iter=2)
    perts = perts[:change.pop("perturbations", len(perts))]
    if "images" in change:
        source = ArraySource(*source.take(np.arange(change.pop("images"))))
    with pytest.raises(ToolkitError, match=f"^{first.solverstate}: {message}"):
        run(tmp, None, source, perts, resume=first.solverstate, **change)


def test_resume_refuses_another_blas_thread_count_and_says_how_to_match_it(setup):
    """Caffe's CPU sums depend on the OpenBLAS thread count: the record stores it (issue 22)."""
    from defense.devices import blas_threads
    tmp, init, source, perts = setup
    _, first = run(tmp, init, source, perts, max_iter=2)
    record = json.loads(record_path(first.solverstate).read_text())
    assert record["blas_threads"] == blas_threads() and blas_threads() >= 1
    record_path(first.solverstate).write_text(json.dumps({**record, "blas_threads": 64}))
    with pytest.raises(ToolkitError, match=f"^{first.solverstate}: written with 64 BLAS thread\\(s\\), this run has "
                                           f"{blas_threads()}, .* set OPENBLAS_NUM_THREADS=64 to resume"):
        run(tmp, None, source, perts, resume=first.solverstate)


def test_resume_refuses_a_snapshot_without_its_training_record(setup):
    tmp, init, source, perts = setup
    _, first = run(tmp, init, source, perts, max_iter=2)
    record_path(first.solverstate).unlink()
    with pytest.raises(ToolkitError, match=r"fru_iter_2.solverstate: its training record .*fru_iter_2.train.json is "
                                           r"missing; keep it beside the .solverstate \(.*start over\)$"):
        run(tmp, None, source, perts, resume=first.solverstate)
    record_path(first.solverstate).write_text("[1, 2")
    with pytest.raises(ToolkitError, match=r"fru_iter_2.train.json: not a valid training record"):
        run(tmp, None, source, perts, resume=first.solverstate)


@pytest.mark.parametrize("solver,net,message", [
    ('type: "Adam"\nbase_lr: 0.01\nlr_policy: "fixed"\n', {}, r"9 history blobs, this Adam solver needs 18"),
    ('type: "SGD"\nbase_lr: 0.01\nlr_policy: "fixed"\n', dict(size=8), r"its history of base_fc\[0\] has shape \(3, 144\), the net's \(3, 256\)"),
], ids=["other-solver-type", "other-net"])
def test_resume_refuses_a_solverstate_of_another_solver_or_net(setup, capsys, solver, net, message):
    """Caffe would abort on these (history length or shape check): exit 2 with one line instead."""
    tmp, init, source, perts = setup
    _, first = run(tmp, init, source, perts, max_iter=2)
    (tmp / "other.prototxt").write_text(net_param_text(tiny_train_net(**net)))
    (tmp / "s2.prototxt").write_text(f'net: "other.prototxt"\n{solver}max_iter: 4\n')
    with pytest.raises(ToolkitError, match=rf"^{first.solverstate}: written for another net or solver type "
                                           rf"\({message}\); resume with the solver and train net that wrote it$"):
        run(tmp, None, source, perts, resume=first.solverstate, solver="s2.prototxt")


def test_divergence_after_a_resume_names_the_resumed_snapshot(setup, monkeypatch):
    tmp, init, source, perts = setup
    _, first = run(tmp, init, source, perts, max_iter=2)
    step = SolverWrapper.step
    monkeypatch.setattr(SolverWrapper, "step", lambda self, x, y: step(self, x, y) * float("nan"))
    with pytest.raises(ToolkitError, match=rf"at iteration 3; the last good snapshot is {first.solverstate};"):
        run(tmp, None, source, perts, resume=first.solverstate)


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
    argv = ["--net", "FashionNet", "--dir", str(tmp_path), "--perturbations", str(tmp_path / "v.npy"),
            "--out", str(tmp_path / "fru.caffemodel"), "--quiet"]
    assert main(argv) == 0 and (tmp_path / "fru.caffemodel").is_file()
    state = tmp_path / "fru_snapshots" / "fru_iter_2.solverstate"
    assert state.is_file()
    resume = argv + ["--resume", str(state), "--max-iter", "3"]
    capsys.readouterr()
    assert run_cli(main, resume + ["--seed", "1"]) == 2
    assert capsys.readouterr().err.endswith(f"{state}: written by a run with seed 0, this one has 1; "
                                            "resume with that run's options and data, or start over\n")
    assert main(resume) == 0 and (tmp_path / "fru_snapshots" / "fru_iter_3.solverstate").is_file()


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
