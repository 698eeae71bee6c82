"""Named weights: URL table, download into torch's hub cache, atomic write, size / SHA-256 checks, strict load.

Every download comes from a local HTTP server on 127.0.0.1 (in a thread)
serving generated tiny checkpoints; no test touches the internet. The cache
is redirected with TORCH_HOME to a temporary folder.
"""

import hashlib
import http.server
import io
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from dsfd import hub
from dsfd.hub import WeightsDownloadError, WeightsInfo
from dsfd.models import CheckpointError, build_model, load_weights

REPO = Path(__file__).resolve().parents[1]
ASSET = REPO / "dsfd" / "assets" / "grace_hopper.jpg"


def _checkpoint(network):
    torch.manual_seed(0)
    model = build_model(network, "tiny")
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "config": model.config}, buf)
    return buf.getvalue(), model.state_dict()


PAPER_BYTES, PAPER_SD = _checkpoint("paper")
RELEASED_BYTES, _ = _checkpoint("released")


class _Handler(http.server.BaseHTTPRequestHandler):
    routes = {}  # path -> (status, body, mode)
    hits = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).hits.append(self.path)
        status, body, mode = self.routes.get(self.path, (404, b"not found", "full"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "truncate":  # announce the whole file, send half of it, hang up
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if mode == "stall":  # half of it, then silence (the client's timeout must fire)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            time.sleep(3)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    _Handler.routes = {
        "/paper_tiny.pth": (200, PAPER_BYTES, "full"),
        "/released_tiny.pth": (200, RELEASED_BYTES, "full"),
        "/truncated.pth": (200, PAPER_BYTES, "truncate"),
        "/stall.pth": (200, PAPER_BYTES, "stall"),
    }
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """torch's hub cache in a temporary folder; no URL overrides from the environment."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for k in list(os.environ):
        if k.startswith("DSFD_WEIGHTS_URL_"):
            monkeypatch.delenv(k)
    _Handler.hits = []
    d = hub.cache_dir()
    assert str(d).startswith(str(tmp_path))
    return d


def _register(monkeypatch, **kw):
    info = WeightsInfo(**{"name": "test-tiny", "filename": "test_tiny.pth", "network": "paper", "backbone": "tiny",
                          **kw})
    monkeypatch.setitem(hub.WEIGHTS, "test-tiny", info)
    return info


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _leftovers(d):
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# --------------------------------------------------------------------------- the table


def test_table_has_the_default_and_released_names():
    assert {"default", "released-resnet152"} <= set(hub.list_weights())
    released = hub.weights_info("released-resnet152")
    assert released.filename == "WIDERFace_DSFD_RES152.pth" and released.url.startswith("https://")
    assert (released.network, released.backbone) == ("released", "resnet152")
    assert hub.weights_info("RELEASED_ResNet152") is released and hub.weights_info("released") is released
    assert hub.url_env_var("released-resnet152") == "DSFD_WEIGHTS_URL_RELEASED_RESNET152"
    assert hub.cached_path(released) == hub.cache_dir() / "WIDERFace_DSFD_RES152.pth"


def test_default_name_is_the_packaged_file(cache):
    path, info = hub.resolve_weights("default")
    assert path == REPO / "dsfd" / "weights" / "default.pth" and info.packaged
    model = load_weights("default")
    assert model.config["backbone"] == "mobilenet0.25" and not cache.exists()  # nothing downloaded


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(FileNotFoundError, match="released-resnet152"):
        load_weights("no-such-weights")


# --------------------------------------------------------------------------- downloads


def test_named_weights_download_once_then_load_strictly(server, cache, monkeypatch):
    _register(monkeypatch, url=server + "/paper_tiny.pth", size=len(PAPER_BYTES),
              sha256=hashlib.sha256(PAPER_BYTES).hexdigest())
    model = load_weights("test-tiny")
    assert (cache / "test_tiny.pth").read_bytes() == PAPER_BYTES
    assert all(torch.equal(model.state_dict()[k], v) for k, v in PAPER_SD.items())
    assert _Handler.hits == ["/paper_tiny.pth"]
    load_weights("test-tiny")  # from the cache, no second request
    assert _Handler.hits == ["/paper_tiny.pth"]
    # no temporary files left; the digest is remembered beside the file
    assert _leftovers(cache) == ["test_tiny.pth", "test_tiny.pth.sha256"]


def test_detector_and_detect_cli_take_a_name(server, cache, monkeypatch, tmp_path):
    import dsfd
    from dsfd.cli import main

    _register(monkeypatch, url=server + "/paper_tiny.pth")
    det = dsfd.Detector(weights="test-tiny", device="cpu")
    assert det.weights == "test-tiny" and not det.random_weights
    out = tmp_path / "out"
    assert main(["detect", str(ASSET), "--weights", "test-tiny", "--out", str(out), "--max-size", "128",
                 "--no-draw", "--no-progress", "--device", "cpu"]) == 0
    assert (out / "grace_hopper.json").is_file()
    assert _Handler.hits == ["/paper_tiny.pth"]


def test_eval_cli_loads_a_name(server, monkeypatch):
    from dsfd.evaluation.cli import _load_detector

    _register(monkeypatch, url=server + "/paper_tiny.pth")
    det = _load_detector("test-tiny", accuracy_mode=False)
    assert det.weights == "test-tiny"


def test_a_url_is_downloaded_into_the_cache(server, cache):
    model = load_weights(server + "/released_tiny.pth")
    assert type(model).__name__ == "ReleasedDSFD"
    name = hub.url_cache_name(server + "/released_tiny.pth")
    assert name.startswith("released_tiny-") and name.endswith(".pth")
    assert (cache / name).read_bytes() == RELEASED_BYTES


def test_file_url(cache, tmp_path):
    src = tmp_path / "weights" / "mine.pth"
    src.parent.mkdir()
    src.write_bytes(PAPER_BYTES)
    model = load_weights(src.as_uri())
    assert model.config["network"] == "paper" and (cache / hub.url_cache_name(src.as_uri())).is_file()


def test_environment_variable_overrides_the_url(server, cache, monkeypatch):
    _register(monkeypatch, url=server + "/missing.pth")
    monkeypatch.setenv("DSFD_WEIGHTS_URL_TEST_TINY", server + "/paper_tiny.pth")
    load_weights("test-tiny")
    assert _Handler.hits == ["/paper_tiny.pth"]


def test_released_name_downloads_to_the_authors_file_name(server, cache, monkeypatch):
    monkeypatch.setenv("DSFD_WEIGHTS_URL_RELEASED_RESNET152", server + "/released_tiny.pth")
    path, info = hub.resolve_weights("released-resnet152", progress=False)
    assert path == cache / "WIDERFace_DSFD_RES152.pth" and path.read_bytes() == RELEASED_BYTES
    assert info.backbone == "resnet152"


def test_a_name_forces_its_network_strict_load(server, cache, monkeypatch):
    # the name stands for a released network; the server sends a paper checkpoint
    _register(monkeypatch, url=server + "/paper_tiny.pth", network="released")
    with pytest.raises(CheckpointError, match="does not fit ReleasedDSFD"):
        load_weights("test-tiny")


# --------------------------------------------------------------------------- failures


def test_truncated_download_leaves_nothing(server, cache, monkeypatch):
    _register(monkeypatch, url=server + "/truncated.pth")
    with pytest.raises(WeightsDownloadError, match="truncated|IncompleteRead") as e:
        load_weights("test-tiny")
    assert str(cache / "test_tiny.pth") in str(e.value)  # where to put the file by hand
    assert _leftovers(cache) == []


def test_stalled_download_times_out_and_leaves_nothing(server, cache):
    dest = cache / "stall.pth"
    t0 = time.perf_counter()
    with pytest.raises(WeightsDownloadError, match="failed after"):
        hub.download(server + "/stall.pth", dest, timeout=0.5, progress=False)
    assert time.perf_counter() - t0 < 3
    assert _leftovers(cache) == []


def test_404_says_where_to_put_the_file(server, cache, monkeypatch):
    monkeypatch.setenv("DSFD_WEIGHTS_URL_RELEASED_RESNET152", server + "/nothing-here.pth")
    with pytest.raises(WeightsDownloadError) as e:
        load_weights("released-resnet152")
    msg = str(e.value)
    assert "HTTP 404" in msg and str(cache / "WIDERFace_DSFD_RES152.pth") in msg
    assert "TencentYoutuResearch/FaceDetection-DSFD" in msg and "DSFD_WEIGHTS_URL_RELEASED_RESNET152" in msg
    assert _leftovers(cache) == []


def test_offline_error_is_clear(cache, monkeypatch):
    monkeypatch.setenv("DSFD_WEIGHTS_URL_RELEASED_RESNET152", f"http://127.0.0.1:{_closed_port()}/x.pth")
    with pytest.raises(WeightsDownloadError, match="offline") as e:
        hub.resolve_weights("released-resnet152", progress=False)
    assert f"put it at {cache / 'WIDERFace_DSFD_RES152.pth'}" in str(e.value)


def test_wrong_hash_is_rejected(server, cache, monkeypatch):
    _register(monkeypatch, url=server + "/paper_tiny.pth", sha256="0" * 64)
    with pytest.raises(WeightsDownloadError, match="SHA-256"):
        load_weights("test-tiny")
    assert _leftovers(cache) == []


def test_wrong_size_is_rejected(server, cache, monkeypatch):
    _register(monkeypatch, url=server + "/paper_tiny.pth", size=len(PAPER_BYTES) + 1)
    with pytest.raises(WeightsDownloadError, match="expected"):
        load_weights("test-tiny")
    assert _leftovers(cache) == []


def test_a_file_put_there_by_hand_is_used_offline(cache, monkeypatch):
    monkeypatch.setenv("DSFD_WEIGHTS_URL_RELEASED_RESNET152", f"http://127.0.0.1:{_closed_port()}/x.pth")
    cache.mkdir(parents=True)
    (cache / "WIDERFace_DSFD_RES152.pth").write_bytes(RELEASED_BYTES)
    path, _ = hub.resolve_weights("released-resnet152")
    assert path == cache / "WIDERFace_DSFD_RES152.pth"


def test_detect_cli_reports_a_failed_download(cache, monkeypatch, tmp_path, capsys):
    from dsfd.cli import main

    monkeypatch.setenv("DSFD_WEIGHTS_URL_RELEASED_RESNET152", f"http://127.0.0.1:{_closed_port()}/x.pth")
    code = main(["detect", str(ASSET), "--weights", "released-resnet152", "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "could not download" in err and "WIDERFace_DSFD_RES152.pth" in err


# --------------------------------------------------------------------------- integrity of files in place
def test_two_urls_with_one_file_name_get_two_cache_files(server, cache, tmp_path):
    a = tmp_path / "a" / "model.pth"
    b = tmp_path / "b" / "model.pth"
    for p, data in ((a, PAPER_BYTES), (b, RELEASED_BYTES)):
        p.parent.mkdir()
        p.write_bytes(data)
    assert type(load_weights(a.as_uri())).__name__ == "DSFD"
    assert type(load_weights(b.as_uri())).__name__ == "ReleasedDSFD"  # not the first file from the cache
    assert hub.url_cache_name(a.as_uri()) != hub.url_cache_name(b.as_uri())
    assert hub.url_cache_name("http://x/y/model") == "model-" + hashlib.sha256(b"http://x/y/model").hexdigest()[:8]


def test_a_corrupted_cache_file_of_the_right_size_is_rejected(server, cache, monkeypatch):
    digest = hashlib.sha256(PAPER_BYTES).hexdigest()
    _register(monkeypatch, url=server + "/paper_tiny.pth", size=len(PAPER_BYTES), sha256=digest)
    load_weights("test-tiny")  # downloaded and checked
    path = cache / "test_tiny.pth"
    calls = []
    real = hub.file_sha256
    monkeypatch.setattr(hub, "file_sha256", lambda p: calls.append(p) or real(p))
    load_weights("test-tiny")
    load_weights("test-tiny")
    assert len(calls) <= 1  # the digest is remembered for the file's size and time
    data = bytearray(PAPER_BYTES)
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    path.write_bytes(bytes(data))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))  # a new modification time
    with pytest.raises(WeightsDownloadError, match="SHA-256"):
        load_weights("test-tiny")


def test_the_packaged_default_is_checked_against_its_record():
    import json

    info = hub.weights_info("default")
    record = json.loads((REPO / "dsfd" / "weights" / "default.json").read_text())
    path = REPO / "dsfd" / "weights" / "default.pth"
    assert info.size == record["bytes"] == path.stat().st_size
    assert info.sha256 == record["sha256"] == hub.file_sha256(path)
    assert hub.resolve_weights("default").path == path
