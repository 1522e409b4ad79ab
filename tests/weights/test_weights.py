"""Verified caffemodel and perturbation downloads, against a local HTTP server (no internet).

The server (conftest.py) serves files the tests make (a tiny NetSpec caffemodel and its
prototxt, a truncated copy, a misfit net's weights, perturbation files), supports Range
requests, and can break a transfer off once to exercise resuming.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from defense.core import L, ToolkitError, caffe, run_cli, write_net_param
from defense.presets import PUBLISHED_NETS, get_preset
from weights.__main__ import main
from weights.manifest import load_manifest, select

from local_server import SIGN_IN_PAGE, UUID


# ---------------------------------------------------------------- tiny nets
def _tiny_net(conv_out: int = 4, with_fc: bool = True, classes: int = 3):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    n.conv1 = L.Convolution(n.data, num_output=conv_out, kernel_size=3)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    if with_fc:
        n.fc = L.InnerProduct(n.relu1, num_output=classes)
    return n.to_proto()


def _make_caffemodel(tmp: Path, name: str, proto, seed: int) -> Path:
    prototxt = tmp / f"{name}.prototxt"
    write_net_param(prototxt, proto)
    net = caffe.Net(str(prototxt), caffe.TEST)
    rng = np.random.default_rng(seed)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.data.shape)
    path = tmp / f"{name}.caffemodel"
    net.save(str(path))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def served(server, tmp_path_factory):
    """Files on the server, plus the reference prototxt of the tiny net (kept locally)."""
    root = Path(server.root)
    work = tmp_path_factory.mktemp("nets")
    good = _make_caffemodel(work, "tiny", _tiny_net(), seed=0)
    (root / "tiny.caffemodel").write_bytes(good.read_bytes())
    raw = good.read_bytes()
    (root / "truncated.caffemodel").write_bytes(raw[:len(raw) - 7])
    (root / "misfit.caffemodel").write_bytes(_make_caffemodel(work, "misfit", _tiny_net(5), 1).read_bytes())
    (root / "partial.caffemodel").write_bytes(
        _make_caffemodel(work, "partial", _tiny_net(4, with_fc=False), 2).read_bytes())
    return {"good": good, "prototxt": work / "tiny.prototxt", "sha": _sha(good), "size": len(raw)}


def _manifest(tmp: Path, served, **entry) -> Path:
    """A one-entry manifest for network 'Tiny' whose dest is tmp/weights/Tiny/tiny.caffemodel."""
    base = {"name": "Tiny-baseline", "net": "Tiny", "kind": "baseline", "defense": None, "url": None,
            "gdrive_id": None, "size": served["size"], "sha256": served["sha"],
            "dest": "weights/Tiny/tiny.caffemodel", "prototxt": str(served["prototxt"]),
            "file": "tiny.caffemodel"}
    base.update(entry)
    path = tmp / "manifest.json"
    path.write_text(json.dumps({"root": ".", "entries": [base]}))
    return path


def _fetch(manifest: Path, server, *extra) -> int:
    return run_cli(main, ["--manifest", str(manifest), "fetch", "Tiny", "--baseline-only",
                          "--base-url", server.base_url, *extra])


def _dest(tmp: Path) -> Path:
    return tmp / "weights" / "Tiny" / "tiny.caffemodel"


def _leftovers(tmp: Path):
    return sorted(p.name for p in (tmp / "weights" / "Tiny").glob("*")) if (tmp / "weights" / "Tiny").exists() else []


# ---------------------------------------------------------------- weights: success paths
def test_fetch_verifies_and_installs(tmp_path, server, served, capsys):
    rc = _fetch(_manifest(tmp_path, served), server)
    assert rc == 0
    assert _dest(tmp_path).read_bytes() == served["good"].read_bytes()
    assert _leftovers(tmp_path) == ["tiny.caffemodel"]
    assert capsys.readouterr().out.strip() == str(_dest(tmp_path))
    # the installed file loads into its prototxt with Caffe
    net = caffe.Net(str(served["prototxt"]), str(_dest(tmp_path)), caffe.TEST)
    assert net.params["conv1"][0].data.shape == (4, 3, 3, 3)


def test_mirror_from_environment_and_existing_file_kept(tmp_path, server, served, monkeypatch):
    monkeypatch.setenv("FRU_WEIGHTS_MIRROR", server.base_url)
    manifest = _manifest(tmp_path, served)
    args = ["--manifest", str(manifest), "fetch", "Tiny", "--baseline-only"]
    assert run_cli(main, args) == 0
    n_requests = len(server.requests)
    assert run_cli(main, args) == 0               # present and verified: no new request
    assert len(server.requests) == n_requests
    assert run_cli(main, args + ["--force"]) == 0  # --force downloads again
    assert len(server.requests) == n_requests + 1


def test_resume_from_existing_part_file(tmp_path, server, served):
    part = _dest(tmp_path).with_name("tiny.caffemodel.part")
    part.parent.mkdir(parents=True)
    raw = served["good"].read_bytes()
    part.write_bytes(raw[:100])
    server.requests.clear()
    assert _fetch(_manifest(tmp_path, served), server) == 0
    assert server.requests == [("tiny.caffemodel", "bytes=100-")]
    assert _dest(tmp_path).read_bytes() == raw
    assert not part.exists()


def test_interrupted_download_keeps_part_then_resumes(tmp_path, server, served, capsys):
    manifest = _manifest(tmp_path, served)
    server.cut.add("tiny.caffemodel")
    server.requests.clear()
    assert _fetch(manifest, server) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "broke off" in err and "run the command again to resume" in err
    part = _dest(tmp_path).with_name("tiny.caffemodel.part")
    assert not _dest(tmp_path).exists()
    half = part.stat().st_size
    assert 0 < half < served["size"]
    assert _fetch(manifest, server) == 0
    assert server.requests[-1] == ("tiny.caffemodel", f"bytes={half}-")
    assert _dest(tmp_path).read_bytes() == served["good"].read_bytes()
    assert not part.exists()


def test_missing_prototxt_skips_layer_check_with_warning(tmp_path, server, served, caplog):
    manifest = _manifest(tmp_path, served, prototxt="not_generated_yet.prototxt")
    assert _fetch(manifest, server) == 0
    assert _dest(tmp_path).is_file()
    assert "not_generated_yet.prototxt not found" in caplog.text


# ---------------------------------------------------------------- weights: failures, one per message
def _assert_failed_cleanly(tmp_path, capsys, rc, pattern):
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert re.search(pattern, err), err
    assert "the download was deleted" in err
    assert _leftovers(tmp_path) == []  # neither the destination nor a .part file


def test_truncated_caffemodel_is_rejected(tmp_path, server, served, capsys):
    manifest = _manifest(tmp_path, served, file="truncated.caffemodel", size=None, sha256=None)
    _assert_failed_cleanly(tmp_path, capsys, _fetch(manifest, server),
                           r"^error: Tiny-baseline: the download is not a valid caffemodel \(truncated or corrupt\)")


def test_size_mismatch_is_rejected(tmp_path, server, served, capsys):
    manifest = _manifest(tmp_path, served, file="truncated.caffemodel", sha256=None)
    _assert_failed_cleanly(tmp_path, capsys, _fetch(manifest, server),
                           rf"has {served['size'] - 7} bytes but the manifest says {served['size']}")


def test_sha256_mismatch_is_rejected(tmp_path, server, served, capsys):
    manifest = _manifest(tmp_path, served, sha256="0" * 64)
    _assert_failed_cleanly(tmp_path, capsys, _fetch(manifest, server),
                           r"has SHA-256 [0-9a-f]{16}\.\.\. but the manifest says 0{16}\.\.\. \(changed, wrong or corrupt file\)")


def test_caffemodel_with_wrong_shapes_is_rejected(tmp_path, server, served, capsys):
    manifest = _manifest(tmp_path, served, file="misfit.caffemodel", size=None, sha256=None)
    _assert_failed_cleanly(tmp_path, capsys, _fetch(manifest, server),
                           r"layer 'conv1' of the download has blob shapes \[\(5, 3, 3, 3\), \(5,\)\] but .* "
                           r"needs \[\(4, 3, 3, 3\), \(4,\)\]")


def test_caffemodel_missing_layers_is_rejected(tmp_path, server, served, capsys):
    manifest = _manifest(tmp_path, served, file="partial.caffemodel", size=None, sha256=None)
    _assert_failed_cleanly(tmp_path, capsys, _fetch(manifest, server), r"the download lacks layer\(s\) fc that")


def test_not_found_on_server(tmp_path, server, served, capsys):
    manifest = _manifest(tmp_path, served, file="nowhere.caffemodel")
    assert _fetch(manifest, server) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"error: Tiny-baseline: http://127\.0\.0\.1:\d+/nowhere\.caffemodel answered 404 "
                        r"\(not found\); check the manifest entry or the mirror", err)
    assert _leftovers(tmp_path) == []


def test_entry_without_source_says_where_to_get_it(tmp_path, served, capsys, monkeypatch):
    monkeypatch.delenv("FRU_WEIGHTS_MIRROR", raising=False)
    manifest = _manifest(tmp_path, served, note="Get it from the authors' README.")
    rc = run_cli(main, ["--manifest", str(manifest), "fetch", "Tiny", "--baseline-only"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: Tiny-baseline: no download address is known. Get it from the authors' README. "
                   f"Then place it at {_dest(tmp_path)}, or use --base-url with a mirror")


def test_existing_bad_file_is_reported_not_replaced(tmp_path, server, served, capsys):
    _dest(tmp_path).parent.mkdir(parents=True)
    _dest(tmp_path).write_bytes(b"junk")
    assert _fetch(_manifest(tmp_path, served), server) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("(truncated or wrong file); the file is not used: delete it to download it again")
    assert _dest(tmp_path).read_bytes() == b"junk"
    assert _fetch(_manifest(tmp_path, served), server, "--force") == 0
    assert _dest(tmp_path).read_bytes() == served["good"].read_bytes()


# ---------------------------------------------------------------- the packaged manifest
NETS = PUBLISHED_NETS


def test_packaged_manifest_covers_the_release():
    entries = load_manifest()
    assert len(entries) == 12
    for net in NETS:
        preset = get_preset(net)
        base, fru = select(entries, net)
        assert (base.kind, base.defense, fru.kind, fru.defense) == ("baseline", None, "fru", "primary")
        assert base.prototxt == preset.deploy and fru.prototxt == preset.deploy_fru
        assert base.dest.parent.name == net and base.dest.parent.parent.name == "weights"
        assert fru.dest.name == f"{preset.file_stem}_FRU.caffemodel"
    assert [e.net for e in entries if e.defense == "secondary"] == ["CaffeNet", "ResNet152"]
    for e in entries:  # every released file comes from Google Drive, as unpacked caffemodels or archives
        assert e.remote.gdrive_id and e.remote.member == ".caffemodel" and e.remote.url is None


def test_packaged_manifest_has_the_published_drive_ids(reference):
    """The twelve ids of the authors' README (as read off in released_weights.md), each on its entry."""
    table = (reference / "published" / "released_weights.md").read_text()
    rows = re.findall(r"^\| ([^|]+?) \| `([\w-]+)` \|", table, flags=re.M)
    assert len(rows) == 12

    def entry_name(model: str) -> str:
        net = model.split()[0].replace("VGG-F", "VGG_F")
        if "baseline" in model:
            return f"{net}-baseline"
        return f"{net}-FRU" + ("-secondary" if "secondary" in model else "")
    assert {e.name: e.remote.gdrive_id for e in load_manifest()} == {entry_name(m): i for m, i in rows}


def test_select_errors(capsys):
    entries = load_manifest()
    with pytest.raises(Exception, match=r"^VGG_F has no FRU model with the secondary defence; available: primary$"):
        select(entries, "VGG_F", defense="secondary")
    with pytest.raises(Exception, match=r"^the manifest has no network 'AlexNet'; known: CaffeNet, "):
        select(entries, "AlexNet")


# ---------------------------------------------------------------- published perturbation files
@pytest.fixture(scope="module")
def perturbations(server):
    root = Path(server.root)
    (root / "UAP" / "Tiny").mkdir(parents=True)
    with h5py.File(root / "UAP" / "Tiny" / "tiny_adv_iter_1.h5", "w") as fh:
        fh["v"] = np.arange(12, dtype=np.float64).reshape(3, 2, 2)
    (root / "NAG").mkdir()
    np.save(root / "NAG" / "perturbation1.npy", np.ones((2, 2, 3), np.float32))
    (root / "NAG" / "broken.npy").write_bytes(b"\x93NUMPY not really")
    with h5py.File(root / "UAP" / "Tiny" / "group.h5", "w") as fh:  # 'v' is a group, not a dataset
        fh.create_group("v")["x"] = np.zeros(3)
    return root


def _pert_manifest(tmp: Path, root: Path, names) -> Path:
    entries = [{"name": n, "attack": n.split("/")[0], "net": None, "url": "http://invalid.invalid/" + n,
                "size": (root / n).stat().st_size, "sha256": _sha(root / n)} for n in names]
    path = tmp / "published.json"
    path.write_text(json.dumps({"entries": entries}))
    return path


def test_fetch_published_through_mirror(tmp_path, server, perturbations):
    from attacks.published import fetch_published
    names = ["UAP/Tiny/tiny_adv_iter_1.h5", "NAG/perturbation1.npy"]
    manifest = _pert_manifest(tmp_path, perturbations, names)
    paths = fetch_published("all", tmp_path / "out", base_url=server.base_url, manifest=manifest)
    assert paths == [tmp_path / "out" / n for n in names]
    with h5py.File(paths[0], "r") as fh:
        assert fh["v"][1, 1, 1] == 7.0
    np.testing.assert_array_equal(np.load(paths[1]), np.ones((2, 2, 3), np.float32))
    again = fetch_published("UAP/Tiny", tmp_path / "out", base_url=server.base_url, manifest=manifest)
    assert again == paths[:1]


def test_fetch_published_rejects_unreadable_file(tmp_path, server, perturbations):
    from attacks.published import fetch_published
    from defense.core import ToolkitError
    manifest = _pert_manifest(tmp_path, perturbations, ["NAG/broken.npy"])
    with pytest.raises(ToolkitError, match=r"^NAG/broken\.npy: the download is not the expected file \(.*broken\.npy\.part: "
                                           r"not a valid \.npy array"):
        fetch_published(["NAG/broken.npy"], tmp_path / "out", base_url=server.base_url, manifest=manifest)
    assert list((tmp_path / "out" / "NAG").iterdir()) == []


def test_fetch_published_refuses_a_group_where_the_dataset_goes_and_keeps_no_part(tmp_path, server, perturbations):
    """Issue 22, class 2: the check of a download reads it through the toolkit's array readers, so a
    group named 'v' is one ToolkitError (was an AttributeError that left the .part behind)."""
    from attacks.published import fetch_published
    from defense.core import ToolkitError
    manifest = _pert_manifest(tmp_path, perturbations, ["UAP/Tiny/group.h5"])
    with pytest.raises(ToolkitError, match=r"^UAP/Tiny/group\.h5: the download is not the expected file .*"
                                           r"has no dataset 'v'"):
        fetch_published(["UAP/Tiny/group.h5"], tmp_path / "out", base_url=server.base_url, manifest=manifest)
    assert list((tmp_path / "out" / "UAP" / "Tiny").iterdir()) == []


def test_fetch_published_unknown_name(tmp_path):
    from attacks.published import fetch_published
    from defense.core import ToolkitError
    with pytest.raises(ToolkitError, match=r"^no published perturbation file 'UAP/AlexNet'"):
        fetch_published(["UAP/AlexNet"], tmp_path)


def test_published_manifest_matches_reference_files(reference):
    """Pinned raw URLs for the paper's Attack_samples/, and hashes equal to the reference copies."""
    from attacks.published import load_published_manifest
    entries = {e.name: e for e in load_published_manifest()}
    assert len(entries) == 64
    for net, stem in [("CaffeNet", "caffenet"), ("VGG_F", "vgg_f"), ("GoogLeNet", "googlenet"),
                      ("VGG16", "vgg16"), ("ResNet152", "resnet152")]:
        for k in range(1, 6):
            assert f"UAP/{net}/{stem}_adv_iter_{k}.h5" in entries
        for k in range(1, 4):
            assert f"UAP/{net}/L_2/{stem}_l2_adv_iter_{k}.h5" in entries
    for e in entries.values():
        assert re.fullmatch(r"https://raw\.githubusercontent\.com/tsborkar/Selective-feature-regeneration/"
                            r"[0-9a-f]{40}/Attack_samples/" + re.escape(e.name), e.url)
    ref_files = [p for p in (reference / "attack_samples").rglob("*") if p.suffix in (".h5", ".npy")]
    assert len(ref_files) == 10
    for p in ref_files:
        e = entries[str(p.relative_to(reference / "attack_samples"))]
        assert (e.size, e.sha256) == (p.stat().st_size, _sha(p))


# ---------------------------------------------------------------- Google Drive path (gdown stubbed, no network)
@pytest.mark.parametrize("key,value,expected", [
    ("dest", 3, "must be a string, got 3"),
    ("size", "12 MB", "must be an integer or null, got '12 MB'"),
    ("url", ["http://x"], "must be a string or null, got ['http://x']"),
    ("sha256", True, "must be a string or null, got True"),
])
def test_manifest_key_of_the_wrong_type_is_one_line_naming_it(tmp_path, key, value, expected):
    entry = {"name": "N-baseline", "net": "CaffeNet", "kind": "baseline", "defense": None, "url": None,
             "gdrive_id": None, "size": None, "sha256": None, "dest": "CaffeNet/caffenet.caffemodel",
             "prototxt": "prototxt/CaffeNet/deploy_caffenet.prototxt"}
    assert len(load_manifest(_write_manifest(tmp_path / "ok.json", [entry]))) == 1
    path = _write_manifest(tmp_path / "m.json", [dict(entry, **{key: value})])
    with pytest.raises(ToolkitError) as err:
        load_manifest(path)
    assert str(err.value) == f"{path}: entry 'N-baseline' key '{key}' {expected}"
    with pytest.raises(ToolkitError, match="every entry must be an object, got 7"):
        load_manifest(_write_manifest(tmp_path / "n.json", [7]))


def _write_manifest(path, entries):
    path.write_text(json.dumps({"entries": entries}))
    return path


# ---------------------------------------------------------------- Google Drive, played by the server
@pytest.fixture
def drive(server, monkeypatch):
    monkeypatch.setenv("FRU_GDRIVE_URL", server.base_url)
    server.drive.clear()
    server.requests.clear()
    return server


def _drive_fetch(tmp_path: Path, served, file_id: str, **entry) -> int:
    manifest = _manifest(tmp_path, served, gdrive_id=file_id, **{"size": None, "sha256": None, **entry})
    return run_cli(main, ["--manifest", str(manifest), "fetch", "Tiny", "--baseline-only"])


def _lock(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "downloads.lock.json").read_text())


def test_drive_small_file_comes_directly_and_is_recorded(tmp_path, drive, served):
    drive.drive["1small"] = ("direct", served["good"].read_bytes())
    assert _drive_fetch(tmp_path, served, "1small") == 0
    assert drive.requests == [("uc?id=1small&export=download", None)]
    assert _dest(tmp_path).read_bytes() == served["good"].read_bytes()
    record = _lock(tmp_path)["tiny.caffemodel"]
    assert (record["size"], record["sha256"]) == (served["size"], served["sha"])
    assert record["source"] == "https://drive.google.com/file/d/1small/view"


def test_drive_large_file_comes_after_the_virus_scan_form(tmp_path, drive, served):
    drive.drive["1large"] = ("confirm", served["good"].read_bytes())
    assert _drive_fetch(tmp_path, served, "1large") == 0
    assert [r for r, _ in drive.requests] == [
        "uc?id=1large&export=download",
        f"download?id=1large&export=download&confirm=t&uuid={UUID}"]
    assert _dest(tmp_path).read_bytes() == served["good"].read_bytes()
    assert _leftovers(tmp_path) == ["tiny.caffemodel"]


@pytest.mark.parametrize("mode", ["direct", "confirm"])
def test_drive_transfer_that_broke_off_resumes(tmp_path, drive, capsys, mode):
    """gdown writes in 512 KiB chunks, so the file is larger than two of them."""
    work = tmp_path / "net"
    work.mkdir()
    big = _make_caffemodel(work, "big", _tiny_net(classes=3000), seed=3)
    served = {"good": big, "prototxt": work / "big.prototxt", "size": big.stat().st_size, "sha": _sha(big)}
    assert served["size"] > 3 * 2 ** 19
    drive.drive["1cut"] = (mode, big.read_bytes())
    drive.cut.add("1cut")
    assert _drive_fetch(tmp_path, served, "1cut") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Tiny-baseline: the Google Drive download of file id 1cut failed or broke off (")
    assert err.count("\n") == 1 and "a partial download resumes" in err
    partial = _leftovers(tmp_path)
    assert len(partial) == 1 and partial[0].startswith("tiny.caffemodel.part") and partial[0].endswith(".part")
    drive.requests.clear()
    assert _drive_fetch(tmp_path, served, "1cut") == 0
    half = served["size"] // 2
    assert drive.requests[-1][1] == f"bytes={half - half % 2 ** 19}-"   # gdown asked for the rest only
    assert _dest(tmp_path).read_bytes() == served["good"].read_bytes()
    assert _leftovers(tmp_path) == ["tiny.caffemodel"]


@pytest.mark.parametrize("mode,reason", [
    ("quota", "(Too many users have viewed or downloaded this file recently.)"),
    ("page", "(Cannot retrieve the public link of the file.)"),
    (None, "(Cannot retrieve the public link of the file.)"),  # unknown id: Drive's 404 page
])
def test_drive_refusals_are_one_line_naming_the_id_and_the_manual_way(tmp_path, drive, served, capsys, mode, reason):
    if mode is not None:
        drive.drive["1refused"] = (mode, b"")
    assert _drive_fetch(tmp_path, served, "1refused") == 2
    assert capsys.readouterr().err == (
        f"error: Tiny-baseline: Google Drive did not send file id 1refused {reason}; download "
        f"https://drive.google.com/file/d/1refused/view in a browser, then put it at {_dest(tmp_path)} "
        "or give it with --load\n")
    assert _leftovers(tmp_path) == []


def test_drive_html_page_labelled_as_the_file_is_deleted(tmp_path, drive, served, capsys):
    drive.drive["1html"] = ("html-file", b"")
    assert _drive_fetch(tmp_path, served, "1html") == 2
    assert capsys.readouterr().err == (
        "error: Tiny-baseline: Google Drive sent an HTML page instead of file id 1html; download "
        f"https://drive.google.com/file/d/1html/view in a browser, then put it at {_dest(tmp_path)} "
        "or give it with --load; the download was deleted\n")
    assert _leftovers(tmp_path) == []
    assert not (tmp_path / "downloads.lock.json").exists()


def test_mirror_html_page_is_deleted(tmp_path, server, served, capsys):
    (Path(server.root) / "page.caffemodel").write_text(SIGN_IN_PAGE)
    assert _fetch(_manifest(tmp_path, served, file="page.caffemodel", size=None, sha256=None), server) == 2
    assert re.fullmatch(r"error: Tiny-baseline: http://127\.0\.0\.1:\d+/page\.caffemodel sent an HTML page instead "
                        r"of the file; check the address or the mirror; the download was deleted\n",
                        capsys.readouterr().err)
    assert _leftovers(tmp_path) == []


def test_recorded_hash_is_checked_on_every_later_copy(tmp_path, drive, served, capsys):
    drive.drive["1rec"] = ("direct", served["good"].read_bytes())
    assert _drive_fetch(tmp_path, served, "1rec") == 0
    dest = _dest(tmp_path)
    raw = bytearray(dest.read_bytes())
    raw[-1] ^= 1                      # same size, other content
    dest.write_bytes(bytes(raw))
    assert _drive_fetch(tmp_path, served, "1rec") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(dest) in err
    assert f"but {tmp_path / 'downloads.lock.json'} (recorded at the first download) says {served['sha'][:16]}..." in err
    assert err.endswith("the file is not used: delete it to download it again\n")
    dest.unlink()                     # Drive now serves another file: refused against the record too
    drive.drive["1rec"] = ("direct", bytes(raw))
    assert _drive_fetch(tmp_path, served, "1rec") == 2
    assert "(changed, wrong or corrupt file); the download was deleted" in capsys.readouterr().err
    assert _leftovers(tmp_path) == []
    before = _lock(tmp_path)
    assert before["tiny.caffemodel"]["sha256"] == served["sha"]  # the record is never rewritten
    drive.drive["1rec"] = ("direct", served["good"].read_bytes())
    assert _drive_fetch(tmp_path, served, "1rec") == 0
    assert _lock(tmp_path) == before


def _archive(tmp_path: Path, kind: str, members: dict) -> bytes:
    path = tmp_path / f"release.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz" if kind == "tar.gz" else "w") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_archive_with_one_caffemodel_is_unpacked(tmp_path, drive, served, kind):
    good = served["good"].read_bytes()
    drive.drive["1arc"] = ("confirm", _archive(tmp_path, kind, {"README.txt": b"weights", "models/x.caffemodel": good}))
    assert _drive_fetch(tmp_path, served, "1arc") == 0
    assert _dest(tmp_path).read_bytes() == good
    assert _leftovers(tmp_path) == ["tiny.caffemodel"]
    assert _lock(tmp_path)["tiny.caffemodel"]["sha256"] == served["sha"]  # the caffemodel's, not the archive's


@pytest.mark.parametrize("members,found", [
    ({"README.txt": b"x"}, "none"),
    ({"a.caffemodel": b"1", "b/b.caffemodel": b"2"}, "2 (a.caffemodel, b/b.caffemodel)"),
])
def test_archive_without_exactly_one_caffemodel_is_refused(tmp_path, drive, served, capsys, members, found):
    drive.drive["1bad"] = ("direct", _archive(tmp_path, "zip", members))
    assert _drive_fetch(tmp_path, served, "1bad") == 2
    assert capsys.readouterr().err == (
        "error: Tiny-baseline: the download is a zip archive that must hold exactly one .caffemodel file, "
        f"found {found}; the download was deleted\n")
    assert _leftovers(tmp_path) == []


def test_offline_names_the_address_and_the_path(tmp_path, drive, served, capsys, monkeypatch):
    monkeypatch.setenv("FRU_OFFLINE", "1")
    drive.drive["1off"] = ("direct", served["good"].read_bytes())
    assert _drive_fetch(tmp_path, served, "1off") == 2
    assert capsys.readouterr().err == (
        f"error: Tiny-baseline: {_dest(tmp_path)} is missing and downloads are off (--offline or FRU_OFFLINE=1); "
        "download https://drive.google.com/file/d/1off/view and put it there\n")
    assert drive.requests == []


def test_unwritable_destination_is_one_line_before_any_request(tmp_path, server, served, capsys):
    (tmp_path / "weights").write_text("a file where the weights folder goes")
    server.requests.clear()
    assert _fetch(_manifest(tmp_path, served), server) == 2
    assert capsys.readouterr().err == (
        f"error: Tiny-baseline: cannot save {_dest(tmp_path)}: {tmp_path / 'weights'} is a file, so no folder can be "
        "made under it; set FRU_DOWNLOAD_DIR (or the command's folder option) to a folder you can write\n")
    assert server.requests == []
