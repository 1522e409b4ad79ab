"""The published command, ``python defense_example.py --dnn <Net> --attack UAP --defense True``,
end to end from a mirror on 127.0.0.1 (tests/local_server.py), then again with the mirror gone.

The mirror serves what a user's machine would fetch: the authors' demo image and the published
UAP files (the reference copies where the perturbation manifest knows their SHA-256, random
files of the published format elsewhere) and, for the released caffemodels that cannot be
downloaded here, random-weight caffemodels of the released FRU layout (our committed FRU
deploy prototxts, which hold the baseline's layers too).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import defense_example
from defense.core import ToolkitError, caffe, read_caffemodel, read_net_param, run_cli, write_bytes
from defense.evaluate.demo import DemoOptions, run_demo
from defense.presets import PUBLISHED_NETS, get_preset
from fake_imagenet import write_uap
from local_server import SIGN_IN_PAGE
from weights.manifest import load_manifest, select

NETS = PUBLISHED_NETS
DEAD_MIRROR = "http://127.0.0.1:9"  # the discard port: nothing listens, every request is refused
PUBLISHED = ["--attack", "UAP", "--defense", "True"]
DEMO_IMAGE_NAME = "test_image_icecream.JPEG"


def random_caffemodel(prototxt: Path, path: Path, seed: int) -> Path:
    """He-scaled random weights for every parameter layer, BatchNorm/Scale as identities (a
    random variance could be negative), so that every activation stays finite."""
    net = caffe.Net(str(prototxt), caffe.TEST)
    rng = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        kind = net.layer_dict[name].type
        if kind == "BatchNorm":  # mean 0, variance 1, scale factor 1
            blobs[0].data[...], blobs[1].data[...], blobs[2].data[...] = 0, 1, 1
        elif kind == "Scale":
            blobs[0].data[...] = 1
            if len(blobs) > 1:
                blobs[1].data[...] = 0
        else:
            w = blobs[0].data
            w[...] = rng.standard_normal(w.shape, dtype=np.float32) * np.sqrt(2.0 / np.prod(w.shape[1:]))
            for b in blobs[1:]:
                b.data[...] = 0
    net.save(str(path))
    return path


def _uap_file(reference: Path, name: str, mirror: Path) -> None:
    """The reference copy when there is one (the manifest checks its SHA-256), else a random file."""
    ref = reference / "attack_samples" / name
    dest = mirror / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if ref.is_file():
        shutil.copyfile(ref, dest)
    else:
        write_uap(dest, np.random.default_rng(0).uniform(-10, 10, (3, 224, 224)))


def _lines(out: str) -> list:
    return [line for line in out.splitlines() if line]


@pytest.fixture
def mirror(server, reference, downloads_on, download_dir, monkeypatch, tmp_path):
    """The mirror's folder (emptied), served through FRU_WEIGHTS_MIRROR; runs in tmp_path."""
    root = Path(server.root)
    for item in root.iterdir():
        shutil.rmtree(item) if item.is_dir() else item.unlink()
    shutil.copyfile(reference / "published" / "test_image_icecream.JPEG", root / "test_image_icecream.JPEG")
    monkeypatch.setenv("FRU_WEIGHTS_MIRROR", server.base_url)
    monkeypatch.chdir(tmp_path)
    server.requests.clear()
    yield root
    for item in root.iterdir():  # the big files go at once, not with pytest's kept tmp folders
        shutil.rmtree(item) if item.is_dir() else item.unlink()


@pytest.mark.slow
@pytest.mark.parametrize("net", NETS)
def test_published_command_from_a_mirror_then_offline(net, mirror, server, reference, monkeypatch, tmp_path, capsys):
    preset = get_preset(net)
    fru = select(load_manifest(), net)[1]
    uap = f"UAP/{net}/{preset.file_stem}_adv_iter_1.h5"
    _uap_file(reference, uap, mirror)
    served = random_caffemodel(preset.deploy_fru, mirror / fru.dest.name, seed=1)
    try:
        assert run_cli(defense_example.main, ["--dnn", net, *PUBLISHED]) == 0
        first = capsys.readouterr().out
        lines = _lines(first)
        assert [line.split(":")[0] for line in lines] == ["baseline", "baseline", "FRU", "FRU", "wrote results/demo/" + net + "_UAP.png"]
        for line in (lines[1], lines[3]):
            assert len(re.fullmatch(r"\w+: top 5 predictions: \[(.*)\]", line).group(1).split(", ")) == 5
        with Image.open(tmp_path / "results" / "demo" / f"{net}_UAP.png") as png:
            assert png.format == "PNG" and png.size == (1000, 800)
        # one caffemodel came down (the FRU file holds the baseline's layers), verified and recorded
        assert sorted(name for name, _ in server.requests) == sorted([DEMO_IMAGE_NAME, uap, fru.dest.name])
        assert fru.dest.read_bytes() == served.read_bytes()
        record = json.loads((fru.remote.lock).read_text())[fru.dest.name]
        assert record["size"] == served.stat().st_size and record["source"] == f"{server.base_url}/{fru.dest.name}"
        assert not select(load_manifest(), net)[0].dest.exists()
        # the mirror is gone: the same command runs from the cache, touching no network
        monkeypatch.setenv("FRU_WEIGHTS_MIRROR", DEAD_MIRROR)
        server.requests.clear()
        assert run_cli(defense_example.main, ["--dnn", net, *PUBLISHED]) == 0
        assert capsys.readouterr().out == first
        assert server.requests == []
        if net == "CaffeNet":
            baseline = _baseline_caffemodel_is_refused_as_fru(fru.dest, preset, tmp_path, capsys)
            _defense_false_fetches_the_baseline(baseline, mirror, server, monkeypatch, capsys)
    finally:
        for entry in select(load_manifest(), net):
            entry.dest.unlink(missing_ok=True)
        served.unlink()


def _baseline_caffemodel_is_refused_as_fru(fru_file: Path, preset, tmp_path: Path, capsys) -> Path:
    """``--defense True --load baseline.caffemodel`` used to run with the FRUs at their fill values."""
    model = read_caffemodel(fru_file)
    baseline_layers = {layer.name for layer in read_net_param(preset.deploy).layer}
    keep = [layer for layer in model.layer if layer.name in baseline_layers]
    del model.layer[:]
    model.layer.extend(keep)
    baseline = write_bytes(tmp_path / "baseline.caffemodel", model.SerializeToString())
    assert run_cli(defense_example.main, ["--dnn", preset.name, *PUBLISHED, "--load", str(baseline)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {baseline}: the caffemodel lacks layer(s) ")
    assert f"that {preset.deploy_fru} needs" in err
    return baseline


def _defense_false_fetches_the_baseline(baseline: Path, mirror: Path, server, monkeypatch, capsys) -> None:
    entry = select(load_manifest(), "CaffeNet")[0]
    shutil.move(baseline, mirror / entry.dest.name)
    monkeypatch.setenv("FRU_WEIGHTS_MIRROR", server.base_url)
    server.requests.clear()
    assert run_cli(defense_example.main, ["--dnn", "CaffeNet", "--attack", "UAP", "--defense", "False"]) == 0
    assert [line.split(":")[0] for line in _lines(capsys.readouterr().out)] == [
        "baseline", "baseline", "wrote results/demo/CaffeNet_UAP.png"]
    assert server.requests == [(entry.dest.name, None)]
    assert entry.dest.read_bytes() == (mirror / entry.dest.name).read_bytes()


@pytest.mark.parametrize("served,why", [
    ("truncated", r"the download is not a valid caffemodel \(truncated or corrupt\)"),
    ("html", r"http://127\.0\.0\.1:\d+/caffenet_FRU\.caffemodel sent an HTML page instead of the file; "
             r"check the address or the mirror"),
])
def test_bad_caffemodel_download_is_one_line_and_leaves_nothing(served, why, mirror, reference, capsys, tmp_path):
    _uap_file(reference, "UAP/CaffeNet/caffenet_adv_iter_1.h5", mirror)
    good = random_caffemodel(get_preset("FashionNet").deploy_fru, tmp_path / "any.caffemodel", seed=0).read_bytes()
    (mirror / "caffenet_FRU.caffemodel").write_bytes(good[:len(good) // 2] if served == "truncated"
                                                     else SIGN_IN_PAGE.encode())
    assert run_cli(defense_example.main, ["--dnn", "CaffeNet", *PUBLISHED]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"error: CaffeNet-FRU: {why}; the download was deleted\n", err), err
    fru = select(load_manifest(), "CaffeNet")[1]
    assert sorted(p.name for p in fru.dest.parent.iterdir()) == []
    assert not fru.remote.lock.exists()
    assert not (tmp_path / "results").exists()


def test_offline_names_each_missing_file_with_its_address(reference, download_dir, tmp_path, monkeypatch, capsys):
    """The three failures a new user met, each saying where to get the file: all missing ones in
    one line (issue 22), then the last one alone."""
    monkeypatch.chdir(tmp_path)
    downloads = download_dir
    commit = "b5e2b93a94e2e7ca0bf2b5fa99676607cb8819ce"
    fru = select(load_manifest(), "ResNet152")[1]
    expected = [
        (f"test_image_icecream.JPEG: {downloads / 'test_image_icecream.JPEG'}",
         f"https://raw.githubusercontent.com/tsborkar/Selective-feature-regeneration/{commit}/test_image_icecream.JPEG"),
        (f"UAP/ResNet152/resnet152_adv_iter_1.h5: {downloads / 'Attack_samples/UAP/ResNet152/resnet152_adv_iter_1.h5'}",
         "https://raw.githubusercontent.com/tsborkar/Selective-feature-regeneration/"),
        (f"ResNet152-FRU: {fru.dest}", "https://drive.google.com/file/d/1Di5r_jt_gOstUWLeg4ullrGillXnrds6/view"),
    ]
    copies = [(reference / "published" / "test_image_icecream.JPEG", downloads / "test_image_icecream.JPEG"),
              (reference / "attack_samples" / "UAP/ResNet152/resnet152_adv_iter_1.h5",
               downloads / "Attack_samples/UAP/ResNet152/resnet152_adv_iter_1.h5")]
    for i, (what, url) in enumerate(expected):
        assert run_cli(defense_example.main, ["--dnn", "ResNet152", *PUBLISHED]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.endswith(" and put it there\n"), err
        assert err.startswith("error: " + ("" if i == len(copies) else f"{len(expected) - i} files are missing: ")), err
        for what, url in expected[i:]:
            assert f"{what} is missing and downloads are off (--offline or FRU_OFFLINE=1); download {url}" in err
        if i < len(copies):
            copies[i][1].parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(*copies[i])


def test_cached_file_that_changed_is_not_used(reference, download_dir, downloads_on):
    """Online (offline, the two files still missing would be listed first): the image, fetched
    first, is refused before any request."""
    image = download_dir / "test_image_icecream.JPEG"
    raw = bytearray((reference / "published" / "test_image_icecream.JPEG").read_bytes())
    raw[-3] ^= 0xFF  # same size, other bytes
    image.write_bytes(bytes(raw))
    with pytest.raises(ToolkitError, match=r"^test_image_icecream\.JPEG: .* has SHA-256 [0-9a-f]{16}\.\.\. but the "
                                           r"manifest says 0901fc3f3f90210c\.\.\. \(changed, wrong or corrupt file\); "
                                           r"the file is not used: delete it to download it again$"):
        run_demo(DemoOptions(net="CaffeNet"))
