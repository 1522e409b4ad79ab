"""Verified caffemodel and perturbation downloads, against a local HTTP server (no internet).

The server serves files the tests make (a tiny NetSpec caffemodel and its prototxt, a
truncated copy, a misfit net's weights, perturbation files), supports Range requests, and
can break a transfer off once to exercise resuming.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from defense.core import L, ToolkitError, caffe, run_cli, write_net_param
from defense.presets import get_preset
from weights.__main__ import main
from weights.manifest import load_manifest, select


# ---------------------------------------------------------------- local server
class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=N-`` support; a name in ``cut`` is sent half, once."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        name = self.path.lstrip("/")
        srv.requests.append((name, self.headers.get("Range")))
        path = Path(srv.root) / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(re.match(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in srv.cut:
            srv.cut.discard(name)
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.root, httpd.requests, httpd.cut = str(root), [], set()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


# ---------------------------------------------------------------- tiny nets
def _tiny_net(conv_out: int = 4, with_fc: bool = True):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    n.conv1 = L.Convolution(n.data, num_output=conv_out, kernel_size=3)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    if with_fc:
        n.fc = L.InnerProduct(n.relu1, num_output=3)
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
                           r"has SHA-256 [0-9a-f]{16}\.\.\. but the manifest says 0{16}\.\.\. \(wrong or corrupt file\)")


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
    assert err.endswith("(truncated or wrong file); run again with --force to replace it")
    assert _dest(tmp_path).read_bytes() == b"junk"
    assert _fetch(_manifest(tmp_path, served), server, "--force") == 0
    assert _dest(tmp_path).read_bytes() == served["good"].read_bytes()


# ---------------------------------------------------------------- the packaged manifest
NETS = ("CaffeNet", "VGG_F", "GoogLeNet", "VGG16", "ResNet152")


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
    for e in entries:  # every entry can be downloaded or says where to get it
        assert e.remote.url or e.remote.gdrive_id or "README" in (e.remote.note or "")


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
    with pytest.raises(ToolkitError, match=r"^NAG/broken\.npy: the download is not a plain \.npy array"):
        fetch_published(["NAG/broken.npy"], tmp_path / "out", base_url=server.base_url, manifest=manifest)
    assert list((tmp_path / "out" / "NAG").iterdir()) == []


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
def test_google_drive_entry_goes_through_gdown(tmp_path, served, monkeypatch):
    import gdown
    calls = []

    def fake_download(id, output, resume, quiet):  # noqa: A002 - gdown's own argument name
        calls.append((id, Path(output).name, resume))
        Path(output).write_bytes(served["good"].read_bytes())
        return output

    monkeypatch.setattr(gdown, "download", fake_download)
    monkeypatch.delenv("FRU_WEIGHTS_MIRROR", raising=False)
    manifest = _manifest(tmp_path, served, gdrive_id="1AbC")
    assert run_cli(main, ["--manifest", str(manifest), "fetch", "Tiny", "--baseline-only"]) == 0
    assert calls == [("1AbC", "tiny.caffemodel.part", True)]
    assert _dest(tmp_path).read_bytes() == served["good"].read_bytes()
    assert _leftovers(tmp_path) == ["tiny.caffemodel"]


def test_google_drive_refusal_is_one_line(tmp_path, served, monkeypatch, capsys):
    import gdown
    from gdown.exceptions import FileURLRetrievalError

    def refuse(**kwargs):
        raise FileURLRetrievalError("Too many users have viewed or downloaded this file recently.\nmore text")

    monkeypatch.setattr(gdown, "download", refuse)
    monkeypatch.delenv("FRU_WEIGHTS_MIRROR", raising=False)
    manifest = _manifest(tmp_path, served, gdrive_id="1AbC")
    assert run_cli(main, ["--manifest", str(manifest), "fetch", "Tiny", "--baseline-only"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: Tiny-baseline: Google Drive refused file id 1AbC (Too many users have viewed or "
                   "downloaded this file recently.); download https://drive.google.com/uc?id=1AbC by hand to "
                   f"{_dest(tmp_path)} or use --base-url with a mirror\n")
    assert _leftovers(tmp_path) == []


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
