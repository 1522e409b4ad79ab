"""FRU training on a fake ImageNet: generate -> train through the command lines, only FRUs learn."""
import numpy as np

from defense.generate import __main__ as generate
from defense.train import __main__ as train
from defense.core import L, P, caffe, load_blobs, save_blobs, write_net_param
from fake_imagenet import write_images


def _tiny_224_net():
    """Input 3x224x224 as CaffeNet's preprocessing gives it; one strided conv, ReLU, global pool, fc."""
    n = caffe.NetSpec()
    n.data = L.Input(name="data", shape=dict(dim=[1, 3, 224, 224]))
    n.conv1 = L.Convolution(n.data, name="conv1", num_output=6, kernel_size=8, stride=8)
    n.relu1 = L.ReLU(n.conv1, name="relu1", in_place=True)
    n.pool = L.Pooling(n.conv1, name="pool", pool=P.Pooling.AVE, global_pooling=True)
    n.fc8 = L.InnerProduct(n.pool, name="fc8", num_output=1000)
    n.prob = L.Softmax(n.fc8, name="prob")
    return n.to_proto()


def test_generate_then_train_on_fake_imagenet(tmp_path):
    rng = np.random.default_rng(0)
    base = write_net_param(tmp_path / "base.prototxt", _tiny_224_net())
    save_blobs(tmp_path / "base.caffemodel", {
        "conv1": [rng.normal(0, 0.01, (6, 3, 8, 8)).astype(np.float32), np.zeros(6, np.float32)],
        "fc8": [rng.normal(0, 0.1, (1000, 6)).astype(np.float32), np.zeros(1000, np.float32)]})
    out = tmp_path / "fru"
    assert generate.main(["--prototxt", str(base), "--layers", "conv1", "--weights", str(tmp_path / "base.caffemodel"),
                          "--out", str(out), "--batch", "4"]) == 0
    index = write_images(tmp_path / "imagenet", per_class=2)
    np.save(tmp_path / "uap.npy", rng.uniform(-10, 10, (3, 224, 224)).astype(np.float32))
    final = out / "fru.caffemodel"
    assert train.main(["--net", "CaffeNet", "--dir", str(out), "--data", "imagenet", "--split", str(index),
                       "--perturbations", str(tmp_path / "uap.npy"), "--out", str(final),
                       "--max-iter", "3", "--quiet"]) == 0

    before, after = load_blobs(out / "init.caffemodel"), load_blobs(final)
    assert sorted(before) == sorted(after)
    frozen = {"conv1", "fc8", "conv1_imap", "conv1_remap"}
    assert frozen <= set(before)
    for name in frozen:
        for b, a in zip(before[name], after[name]):
            np.testing.assert_array_equal(a, b)
    fru_convs = [name for name in before if name.startswith("conv1_fru_conv")]
    assert len(fru_convs) == 4
    assert any(not np.array_equal(b, a) for name in fru_convs for b, a in zip(before[name], after[name]))
