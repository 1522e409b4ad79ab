"""ILSVRC2012 index building and the published preprocessing, on a fake ImageNet made here."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from defense.core import ToolkitError, run_cli
from defense.data.imagenet import ImageNetIndex, build_train_index, build_val_index, load_synsets, read_index
from defense.imagenet import main
from defense.data.preprocess import add_perturbation, load_image, preprocess
from defense.presets import get_preset

WNIDS = ["n01440764", "n01443537", "n01484850"]  # sorted: Caffe labels 0, 1, 2
ILSVRC_IDS = {449: "n01440764", 442: "n01443537", 3: "n01484850"}  # devkit ids are in another order


def _nearest_rows(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel for Pillow's NEAREST resize, written out independently:
    position = scale/2, then += scale per pixel (float64 accumulation), truncated."""
    scale, pos, out = n_in / n_out, n_in / n_out * 0.5, []
    for _ in range(n_out):
        out.append(int(pos))
        pos += scale
    return np.array(out)


def _expected(rgb: np.ndarray, new_w: int, new_h: int, top: int, left: int) -> np.ndarray:
    resized = rgb[_nearest_rows(rgb.shape[0], new_h)][:, _nearest_rows(rgb.shape[1], new_w)]
    crop = resized[top:top + 224, left:left + 224]
    return crop[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)  # RGB HWC -> BGR CHW


def _jpeg(path: Path, w: int, h: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    smooth = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
    Image.fromarray(smooth.astype(np.uint8)).save(path, quality=90)
    return path


# ---------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("net, w, h, new_w, new_h, top, left", [
    ("VGG_F", 300, 200, 384, 256, 16, 80),       # shorter side 256: 256*300//200 = 384 wide
    ("ResNet152", 200, 300, 256, 384, 80, 16),   # portrait: 256*300//200 = 384 high
    ("VGG16", 301, 257, 299, 256, 16, 37),       # floor division: 256*301//257 = 299
    ("CaffeNet", 300, 200, 256, 256, 16, 16),    # squash to 256x256
    ("GoogLeNet", 200, 300, 256, 256, 16, 16),
])
def test_preprocess_matches_published_rule_pixel_for_pixel(tmp_path, net, w, h, new_w, new_h, top, left):
    path = _jpeg(tmp_path / "img.JPEG", w, h, seed=1)
    rgb = np.asarray(Image.open(path).convert("RGB"))
    x = preprocess(path, get_preset(net))
    assert x.dtype == np.float32 and x.shape == (3, 224, 224)
    np.testing.assert_array_equal(x, _expected(rgb, new_w, new_h, top, left))


def test_channel_order_is_bgr_and_grey_images_become_rgb(tmp_path):
    Image.new("RGB", (240, 240), (200, 10, 0)).save(tmp_path / "red.png")
    x = preprocess(tmp_path / "red.png", get_preset("CaffeNet"))
    assert (x[0].max(), x[1].min(), x[2].min()) == (0.0, 10.0, 200.0)
    Image.new("L", (260, 230), 77).save(tmp_path / "grey.png")
    g = preprocess(tmp_path / "grey.png", get_preset("VGG16"))
    assert np.all(g == 77.0)


def test_perturbation_added_before_mean_and_optional_clip(tmp_path):
    path = _jpeg(tmp_path / "img.JPEG", 256, 256, seed=2)
    preset = get_preset("ResNet152")
    clean = preprocess(path, preset)
    v = np.full((3, 224, 224), 300.0, np.float32)
    np.testing.assert_array_equal(preprocess(path, preset, perturbation=v), clean + 300.0)
    assert preprocess(path, preset, perturbation=v, clip=True).max() == 255.0
    batch = add_perturbation(np.stack([clean, clean]), -v, clip=True)  # broadcast over a batch
    assert batch.shape == (2, 3, 224, 224) and batch.max() == 0.0
    with pytest.raises(ValueError, match=r"^perturbation shape \(3, 227, 227\) does not match the image shape"):
        preprocess(path, preset, perturbation=np.zeros((3, 227, 227)))


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_unreadable_image_is_one_line_error(tmp_path, content):
    bad = tmp_path / "ILSVRC2012_val_00000003.JPEG"
    if content == "truncated":
        good = _jpeg(tmp_path / "good.JPEG", 300, 300, seed=3).read_bytes()
        content = good[:len(good) // 2]
    bad.write_bytes(content)
    with pytest.raises(ToolkitError, match=r"^\S+ILSVRC2012_val_00000003\.JPEG: not a readable image \(.*\); "
                                           r"replace it or remove it from the index$") as err:
        load_image(bad)
    assert "\n" not in str(err.value)


def test_missing_image_error(tmp_path):
    with pytest.raises(ToolkitError, match=r"nowhere\.JPEG: image not found; check the path or rebuild the index$"):
        preprocess(tmp_path / "nowhere.JPEG", get_preset("CaffeNet"))


# ---------------------------------------------------------------- fake ImageNet
@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("ilsvrc")
    val = root / "val"
    val.mkdir()
    # 12 validation images, labels cycling 2, 0, 1, ...; file i is ILSVRC2012_val_<i>.JPEG
    labels = [(i * 2 + 2) % 3 for i in range(12)]
    for i in range(1, 13):
        _jpeg(val / f"ILSVRC2012_val_{i:08d}.JPEG", 40 + 3 * i, 30 + 2 * i, seed=i)
    (root / "val.txt").write_text("".join(f"ILSVRC2012_val_{i:08d}.JPEG {lab}\n"
                                          for i, lab in enumerate(labels, 1)))
    by_wnid = {w: k for k, w in ILSVRC_IDS.items()}
    (root / "gt.txt").write_text("".join(f"{by_wnid[WNIDS[lab]]}\n" for lab in labels))
    synsets = np.array([(k, w, 0) for k, w in ILSVRC_IDS.items()] + [(1001, "n00001740", 3)],
                       dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    scipy.io.savemat(root / "meta.mat", {"synsets": synsets})
    (root / "synsets.txt").write_text("".join(f"{w} words\n" for w in WNIDS))
    train = root / "train"
    for c, w in enumerate(WNIDS):
        (train / w).mkdir(parents=True)
        for j in range(6):
            _jpeg(train / w / f"{w}_{j}.JPEG", 50, 40, seed=100 + 10 * c + j)
    return {"root": root, "val": val, "labels": labels, "train": train}


def test_synset_rule_matches_published_labels(reference):
    """Caffe label = rank of the WordNet id in sorted order, as in the published imagenet_labels.json."""
    published = load_synsets(reference / "published" / "imagenet_labels.json").labels
    assert len(published) == 1000
    assert published == {w: i for i, w in enumerate(sorted(published))}


def test_val_index_from_val_txt_with_per_class_limit(fake):
    items = build_val_index(fake["val"], fake["root"] / "val.txt", per_class=2)
    names = {lab: sorted(f"ILSVRC2012_val_{i:08d}.JPEG" for i, l in enumerate(fake["labels"], 1) if l == lab)
             for lab in range(3)}
    assert items == [(n, lab) for lab in range(3) for n in names[lab][:2]]
    assert len(build_val_index(fake["val"], fake["root"] / "val.txt")) == 12


def test_val_index_from_devkit_ground_truth_equals_val_txt(fake):
    meta = load_synsets(fake["root"] / "meta.mat")
    assert meta.labels == {w: i for i, w in enumerate(WNIDS)} and meta.ilsvrc_ids == ILSVRC_IDS
    devkit = build_val_index(fake["val"], fake["root"] / "gt.txt", synsets=meta, per_class=3)
    assert devkit == build_val_index(fake["val"], fake["root"] / "val.txt", per_class=3)
    text_map = fake["root"] / "ids.txt"
    text_map.write_text("".join(f"{k} {w}\n" for k, w in ILSVRC_IDS.items()))
    assert build_val_index(fake["val"], fake["root"] / "gt.txt", synsets=load_synsets(text_map)) == \
        build_val_index(fake["val"], fake["root"] / "val.txt")


def test_devkit_ground_truth_needs_synsets(fake):
    with pytest.raises(ToolkitError, match=r"gt\.txt: devkit ground truth \(ILSVRC2012_IDs\) needs --synsets"):
        build_val_index(fake["val"], fake["root"] / "gt.txt")


def test_missing_validation_images_error(fake, tmp_path):
    listed = tmp_path / "val.txt"
    listed.write_text((fake["root"] / "val.txt").read_text() + "ILSVRC2012_val_00000099.JPEG 1\n")
    with pytest.raises(ToolkitError, match=r"1 of the 13 images in .* are missing \(first: ILSVRC2012_val_00000099"):
        build_val_index(fake["val"], listed)
    assert len(build_val_index(fake["val"], listed, allow_missing=True)) == 12


def test_train_subset_is_seeded_and_reproducible(fake):
    synsets = load_synsets(fake["root"] / "synsets.txt")
    a = build_train_index(fake["train"], synsets, per_class=2, seed=5)
    assert a == build_train_index(fake["train"], synsets, per_class=2, seed=5)
    assert [lab for _, lab in a] == [0, 0, 1, 1, 2, 2]
    assert all(p.startswith(WNIDS[lab] + "/") for p, lab in a)
    assert a != build_train_index(fake["train"], synsets, per_class=2, seed=6)
    assert len(build_train_index(fake["train"], synsets)) == 18
    # a class's draw does not depend on the other classes being there
    synsets_one = load_synsets(fake["root"] / "synsets.txt")
    only = fake["root"] / "train_one"
    (only / WNIDS[1]).mkdir(parents=True)
    for f in (fake["train"] / WNIDS[1]).iterdir():
        (only / WNIDS[1] / f.name).write_bytes(f.read_bytes())
    assert build_train_index(only, synsets_one, per_class=2, seed=5) == a[2:4]


def test_train_folder_not_in_synsets(fake, tmp_path):
    (tmp_path / "n99999999").mkdir()
    with pytest.raises(ToolkitError, match=r"folder 'n99999999' is not a class of the synset file; check --synsets$"):
        build_train_index(tmp_path, load_synsets(fake["root"] / "synsets.txt"))


# ---------------------------------------------------------------- CLI and data source
def test_prepare_cli_and_data_source(fake, tmp_path, capsys):
    out = tmp_path / "val_index.jsonl"
    rc = run_cli(main, ["prepare", "val", "--images", str(fake["val"]), "--labels", str(fake["root"] / "gt.txt"),
                        "--synsets", str(fake["root"] / "meta.mat"), "--per-class", "2", "--out", str(out)])
    assert rc == 0
    assert json.loads(capsys.readouterr().out) == {"index": str(out), "images": 6, "classes": 3}
    meta, items = read_index(out)
    assert meta["root"] == str(fake["val"].resolve()) and meta["per_class"] == 2 and meta["count"] == 6
    source = ImageNetIndex(out, get_preset("VGG_F"), workers=2)
    batches = list(source.batches(4))
    assert [b[0].shape for b in batches] == [(4, 3, 224, 224), (2, 3, 224, 224)]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(batches[1][0][1], preprocess(fake["val"] / items[5][0], get_preset("VGG_F")))


def test_prepare_cli_errors(fake, tmp_path, capsys):
    rc = run_cli(main, ["prepare", "train", "--images", str(fake["train"]), "--out", str(tmp_path / "x.jsonl")])
    assert rc == 2
    assert capsys.readouterr().err == "error: prepare train needs --synsets to map <wnid> folders to labels\n"
    assert not (tmp_path / "x.jsonl").exists()
    bad = tmp_path / "index.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(ToolkitError, match=r"index\.jsonl: not an index written by 'python -m defense\.imagenet prepare'"):
        ImageNetIndex(bad, get_preset("CaffeNet"))


@pytest.mark.parametrize("label", [-1, 1000])
def test_index_label_outside_the_nets_classes_is_refused(tmp_path, label):
    from defense.data.imagenet import write_index

    index = write_index(tmp_path / "i.jsonl", [("a.JPEG", 3), ("b.JPEG", label)], tmp_path, {"split": "val"})
    with pytest.raises(ToolkitError) as err:
        ImageNetIndex(index, get_preset("CaffeNet"))
    assert str(err.value) == f"{index}: label {label} is out of range for CaffeNet's 1000 classes (0 to 999)"


@pytest.mark.parametrize("meta,message", [
    ({"split": "val"}, "the meta line needs key 'root' (the image folder, a string)"),
    ({"root": 3}, "the meta line needs key 'root' (the image folder, a string)"),
    ([1, 2], "the meta line needs key 'root' (the image folder, a string)"),
])
def test_index_meta_of_the_wrong_type_is_one_line_naming_the_key(tmp_path, meta, message):
    index = tmp_path / "i.jsonl"
    index.write_text(json.dumps({"meta": meta}) + "\n" + json.dumps({"path": "a.JPEG", "label": 1}) + "\n")
    with pytest.raises(ToolkitError) as err:
        ImageNetIndex(index, get_preset("CaffeNet"))
    assert str(err.value) == f"{index}: {message}; rebuild it with 'python -m defense.imagenet prepare'"
