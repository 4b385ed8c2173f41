"""medmnist:NAME[@SIZE]: download from a real local HTTP server, md5 check, cache reuse, offline errors."""

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import numpy as np
import pytest

from rlmask.data import build_pool, register_medmnist_file
from rlmask.data.medmnist import MEDMNIST_MD5
from rlmask.errors import UserError


class _Server:
    """Serves ``files`` (name -> bytes) on 127.0.0.1 and counts requests per file name."""

    def __init__(self, files: dict[str, bytes]):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                name = urlparse(self.path).path.lstrip("/")
                server.requests[name] = server.requests.get(name, 0) + 1
                body = files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep test output quiet
                pass

        self.requests: dict[str, int] = {}
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def toy_bytes(tmp_path, npz_writer):
    npz_writer(tmp_path / "src.npz", num_classes=2, classes=["no", "yes"])
    return (tmp_path / "src.npz").read_bytes()


@pytest.fixture
def server(toy_bytes, monkeypatch):
    srv = _Server({"toymnist.npz": toy_bytes, "toymnist_64.npz": toy_bytes, "badmnist.npz": b"not the file"})
    monkeypatch.setenv("RLMASK_MEDMNIST_URL", srv.url)
    md5 = hashlib.md5(toy_bytes).hexdigest()
    for name in ("toymnist.npz", "toymnist_64.npz", "badmnist.npz"):
        monkeypatch.setitem(MEDMNIST_MD5, name, "")  # restored after the test
        register_medmnist_file(name, md5)
    yield srv
    srv.stop()


def test_download_then_reuse_cache(server, tmp_path):
    cache = tmp_path / "cache"
    pool = build_pool(["medmnist:toymnist"], cache_dir=cache)
    assert pool.sources == ["toymnist"] and pool.classes == ["toymnist/no", "toymnist/yes"]
    assert server.requests == {"toymnist.npz": 1}
    assert sorted(p.name for p in cache.iterdir()) == ["toymnist.npz", "toymnist.npz.md5"]  # no temp file left
    again = build_pool(["medmnist:toymnist"], cache_dir=cache)
    assert server.requests == {"toymnist.npz": 1}  # served from the cache, no request
    assert len(again.splits["train"]) == len(pool.splits["train"])


def test_size_suffix_and_env_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("RLMASK_CACHE", str(tmp_path / "envcache"))
    pool = build_pool(["medmnist:toymnist@64"])
    assert pool.sources == ["toymnist_64"]
    assert (tmp_path / "envcache" / "toymnist_64.npz").is_file()


def test_md5_mismatch_leaves_nothing(server, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(
        UserError,
        match=r"^--data medmnist:badmnist: md5 mismatch for http://127\.0\.0\.1:\d+/"
        r"badmnist\.npz\?download=1: expected [0-9a-f]{32} got " + hashlib.md5(b"not the file").hexdigest(),
    ):
        build_pool(["medmnist:badmnist"], cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_offline(server, tmp_path):
    server.stop()
    server.stop = lambda: None  # already stopped
    cache = tmp_path / "cache"
    with pytest.raises(
        UserError,
        match=r"cannot download http://127\.0\.0\.1:\d+/toymnist\.npz\?download=1 "
        r"\(.+\); put the file in .*cache or check the network",
    ):
        build_pool(["medmnist:toymnist"], cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_http_error_is_a_download_error(server, tmp_path, monkeypatch):
    monkeypatch.setitem(MEDMNIST_MD5, "gonemnist.npz", "0" * 32)
    with pytest.raises(UserError, match=r"cannot download .*gonemnist\.npz.*Not Found"):
        build_pool(["medmnist:gonemnist"], cache_dir=tmp_path)


def test_wrong_cached_file_is_reported_not_replaced(server, tmp_path):
    (tmp_path / "toymnist.npz").write_bytes(b"an older version")
    with pytest.raises(UserError, match=r"cached file .*toymnist\.npz has md5 [0-9a-f]{32}, expected"):
        build_pool(["medmnist:toymnist"], cache_dir=tmp_path)
    assert server.requests == {} and (tmp_path / "toymnist.npz").read_bytes() == b"an older version"


@pytest.mark.parametrize("spec", ["medmnist:nosuchmnist", "medmnist:pathmnist@32", "medmnist:pathmnist@big"])
def test_unknown_name_or_size(spec, tmp_path):
    with pytest.raises(UserError, match=r"valid names: .*bloodmnist.*organamnist.*pathmnist"):
        build_pool([spec], cache_dir=tmp_path)


def test_multi_label_rejected_before_download(tmp_path):
    with pytest.raises(UserError, match=r"multi-label labels \(N, 14\) are not supported"):
        build_pool(["medmnist:chestmnist"], cache_dir=tmp_path)


def test_official_md5s_match_the_shared_files(shared_data):
    # The manifest's five MedMNIST files are the official 28-px releases.
    for name in ("organamnist", "bloodmnist", "pneumoniamnist", "breastmnist", "retinamnist"):
        manifest = (shared_data / "MANIFEST.md").read_text()
        row = next(line for line in manifest.splitlines() if line.startswith(f"| {name}.npz"))
        assert MEDMNIST_MD5[f"{name}.npz"] == row.split("|")[2].strip()


def test_cached_official_file_opens_without_network(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("RLMASK_MEDMNIST_URL", "http://127.0.0.1:9")  # nothing listens there
    (tmp_path / "breastmnist.npz").write_bytes((shared_data / "breastmnist.npz").read_bytes())
    pool = build_pool(["medmnist:breastmnist"], cache_dir=tmp_path)
    assert pool.classes == ["breastmnist/malignant", "breastmnist/normal, benign"]
    with np.load(shared_data / "breastmnist.npz") as z:
        assert len(pool.splits["test"]) == len(z["test_labels"])
