"""Fast deploy export: same outputs as the explicit/folded FRU layout, no permutation/Slice/Concat."""
import pytest

from defense.core import load_blobs, read_net_param, write_net_param
from defense.core import load_net
from defense.export import main
from defense.generate import insert_frus, save_net_weights
from defense.generate.export import blob_channels, fast_layout, find_fru_blocks
from defense.networks import build_baseline
from defense.presets import PUBLISHED_NETS, FruTarget, fru_names, get_preset
from defense.generate.surgery import init_fru_blobs
from fru_nets import forward, perturb_frus, random_weights, rel_err, tiny_net

IMAGENET = PUBLISHED_NETS
GONE = {"Slice", "Concat", "BatchNorm"}


def _trained(base, targets, mode, seed=0):
    """An FRU net with non-identity FRU weights, as after training."""
    blobs = random_weights(base, seed)
    init, _ = init_fru_blobs(base, blobs, targets, mode, seed=seed)
    perms = tuple(x for t in targets for x in (fru_names(t).imap, fru_names(t).remap))
    return insert_frus(base, targets, mode), perturb_frus(init, blobs, skip=perms)


def _fast(param, blobs):
    return fast_layout(param, blobs, blob_channels(load_net(param)))


@pytest.mark.parametrize("mode", ["explicit", "folded"])
def test_tiny_fast_layout_is_equal_and_has_no_permutation(mode):
    targets = (FruTarget("conv1", 4, 3, short="conv1", prefix="dc1_"), FruTarget("conv2", 3, 2, short="conv2", prefix="dc2_"))
    fru, blobs = _trained(tiny_net(bn=True), targets, mode)
    fast, fast_blobs, n_blocks = _fast(fru, blobs)
    assert n_blocks == 2
    types = [layer.type for layer in fast.layer]
    assert not GONE & set(types) and types.count("Eltwise") == 2
    assert not {"conv1_imap", "conv1_remap", "conv2_imap", "conv2_remap"} & {layer.name for layer in fast.layer}
    assert fast_blobs["dc1_conv1"][0].shape == (3, 8, 1, 1) and fast_blobs["dc1_conv4"][0].shape == (8, 3, 1, 1)
    assert rel_err(forward(fru, blobs), forward(fast, fast_blobs)) < 1e-4


def test_blocks_are_found_by_structure_not_name():
    targets = (FruTarget("conv1", 4, 3, short="c", prefix="zz_"),)
    fru, blobs = _trained(tiny_net(), targets, "explicit")
    renamed = {layer.name: f"L{i}" for i, layer in enumerate(fru.layer) if layer.name not in ("conv1", "conv2", "fc")}
    for layer in fru.layer:
        layer.name = renamed.get(layer.name, layer.name)
    blobs = {renamed.get(k, k): v for k, v in blobs.items()}
    channels = blob_channels(load_net(fru))
    (block,) = find_fru_blocks(fru, blobs, channels)
    assert block.imap and block.remap and block.n == 4 and block.channels == 8 and len(block.chain) == 13
    fast, fast_blobs, _ = fast_layout(fru, blobs, channels)
    assert rel_err(forward(fru, blobs), forward(fast, fast_blobs)) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGENET)
def test_published_layout_to_fast(name):
    preset = get_preset(name)
    base = build_baseline(name)
    fru, blobs = _trained(base, preset.targets, preset.mode)
    fast, fast_blobs, n_blocks = _fast(fru, blobs)
    assert n_blocks == len(preset.targets)
    types = [layer.type for layer in fast.layer]
    assert "Slice" not in types and "BatchNorm" not in types
    assert types.count("Concat") == [layer.type for layer in base.layer].count("Concat")  # GoogLeNet's own
    assert rel_err(forward(fru, blobs), forward(fast, fast_blobs)) < 1e-4


def test_cli_export(tmp_path):
    targets = (FruTarget("conv2", 3, 2, short="conv2", prefix="dc2_"),)
    fru, blobs = _trained(tiny_net(bn=True), targets, "explicit")
    proto = write_net_param(tmp_path / "fru.prototxt", fru)
    weights = save_net_weights(tmp_path / "fru.caffemodel", fru, blobs)
    assert main(["--prototxt", str(proto), "--weights", str(weights), "--out", str(tmp_path / "fast")]) == 0
    fast = read_net_param(tmp_path / "fast" / "deploy_fast.prototxt")
    fast_blobs = load_blobs(tmp_path / "fast" / "fast.caffemodel")
    assert "conv1_bn" not in fast_blobs and fast_blobs["conv1"][1].shape == (8,)  # baseline BN folded too
    assert not {"BatchNorm", "Scale", "Slice", "Concat"} & {layer.type for layer in fast.layer}
    assert rel_err(forward(fru, blobs), forward(fast, fast_blobs)) < 1e-4


def test_cli_export_refuses_a_net_without_frus(tmp_path, capsys):
    base = tiny_net()
    proto = write_net_param(tmp_path / "plain.prototxt", base)
    weights = save_net_weights(tmp_path / "plain.caffemodel", base, random_weights(base))
    assert main(["--prototxt", str(proto), "--weights", str(weights), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "plain.prototxt: no FRU block found" in err


def test_cli_export_missing_weights(tmp_path, capsys):
    proto = write_net_param(tmp_path / "plain.prototxt", tiny_net())
    assert main(["--prototxt", str(proto), "--weights", str(tmp_path / "x.caffemodel"), "--out", str(tmp_path)]) == 2
    assert "x.caffemodel: caffemodel not found" in capsys.readouterr().err
