"""Data sources: the Fashion-MNIST IDX reader (real and corrupt files) and the DataSource base."""
import gzip
import struct

import numpy as np
import pytest

from defense.core import ToolkitError, read_idx
from defense.presets import FASHION_MNIST_FIX
from defense.data import FASHION_MNIST_DIR, ArraySource, FashionMnist, Subset, open_source

needs_fashion = pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                                   reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def _idx(path, arr, magic=None, extra=b""):
    arr = np.asarray(arr, np.uint8)
    head = magic if magic is not None else struct.pack(">HBB", 0, 8, arr.ndim)
    with gzip.open(path, "wb") as fh:
        fh.write(head + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes() + extra)
    return path


@needs_fashion
@pytest.mark.parametrize("split,count", [("train", 60000), ("test", 10000)])
def test_fashion_mnist_real_files(split, count):
    src = FashionMnist(split)
    x, y = src.arrays()
    assert x.shape == (count, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (count,) and y.dtype == np.int64
    assert (y.min(), y.max()) == (0, 9)
    assert np.bincount(y).tolist() == [count // 10] * 10
    assert x.min() == 0.0 and x.max() == 255.0
    assert src.image_shape == (1, 28, 28) and len(src) == count


@needs_fashion
def test_fashion_mnist_mean_matches_preset():
    from defense.presets import get_preset
    x, _ = FashionMnist("train").arrays()
    assert float(x.mean()) == pytest.approx(get_preset("FashionNet").mean_bgr[0], abs=0.01)


def test_read_idx_roundtrip(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(read_idx(_idx(tmp_path / "a.gz", arr), 3, FASHION_MNIST_FIX), arr)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(ToolkitError, match=r"missing.gz: file not found; install it with 'apt-get install dataset-fashion-mnist'"):
        read_idx(tmp_path / "missing.gz", 3, FASHION_MNIST_FIX)


def test_read_idx_not_gzip(tmp_path):
    (tmp_path / "a.gz").write_bytes(b"plain bytes, not gzip")
    with pytest.raises(ToolkitError, match=r"a.gz: not a readable gzip file .*apt-get install dataset-fashion-mnist"):
        read_idx(tmp_path / "a.gz", 3, FASHION_MNIST_FIX)


def test_read_idx_bad_magic(tmp_path):
    path = _idx(tmp_path / "a.gz", np.zeros((2, 3, 4)), magic=struct.pack(">HBB", 0, 8, 1))
    with pytest.raises(ToolkitError, match=r"a.gz: bad IDX magic number 0x00000801 \(expected 0x00000803\)"):
        read_idx(path, 3, FASHION_MNIST_FIX)


def test_read_idx_truncated_data(tmp_path):
    arr = np.zeros((2, 3, 4), np.uint8)
    with gzip.open(tmp_path / "a.gz", "wb") as fh:
        fh.write(struct.pack(">HBB3I", 0, 8, 3, 2, 3, 4) + arr.tobytes()[:-5])
    with pytest.raises(ToolkitError, match=r"a.gz: IDX data has 19 bytes but its header says 24"):
        read_idx(tmp_path / "a.gz", 3, FASHION_MNIST_FIX)


def test_read_idx_truncated_header(tmp_path):
    with gzip.open(tmp_path / "a.gz", "wb") as fh:
        fh.write(b"\x00\x00\x08")
    with pytest.raises(ToolkitError, match=r"a.gz: truncated IDX header"):
        read_idx(tmp_path / "a.gz", 3, FASHION_MNIST_FIX)


def test_fashion_mnist_wrong_image_count(tmp_path):
    _idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((5, 28, 28)))
    _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(5))
    with pytest.raises(ToolkitError, match=r"t10k-images-idx3-ubyte.gz: expected 10000 images of 28x28, got shape \(5, 28, 28\)"):
        FashionMnist("test", root=tmp_path)


def test_fashion_mnist_bad_split():
    with pytest.raises(ValueError, match="split must be one of train, test, got 'val'"):
        FashionMnist("val")


def test_open_source_unknown():
    with pytest.raises(ToolkitError, match="unknown data source 'mnist'; known: fashion-mnist"):
        open_source("mnist", "test")


def test_array_source_batches_cover_every_image_once():
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    src = ArraySource(x, np.arange(10) % 3)
    seen = [yb for _, yb in src.batches(4)]
    assert [len(b) for b in seen] == [4, 4, 2]
    shuffled = np.concatenate([xb.ravel() for xb, _ in src.batches(3, np.random.default_rng(0))])
    assert sorted(shuffled.tolist()) == list(range(10)) and shuffled.tolist() != list(range(10))


def test_subset_and_sample():
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    src = ArraySource(x, np.arange(10))
    sub = Subset(src, [7, 2])
    xs, ys = sub.arrays()
    assert ys.tolist() == [7, 2] and xs.ravel().tolist() == [7.0, 2.0]
    picked = src.sample(4, np.random.default_rng(1))
    assert len(picked) == 4 and len(set(picked.arrays()[1].tolist())) == 4
    with pytest.raises(ValueError, match=r"subset indices must be a 1-D selection of 0..9"):
        Subset(src, [10])


def test_array_source_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"images must be \(N, C, H, W\)"):
        ArraySource(np.zeros((3, 4, 4)), np.zeros(3))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        ArraySource(np.zeros((3, 1, 4, 4)), np.zeros(2))
