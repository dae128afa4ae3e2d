"""The adapter cache against real HTTP servers on 127.0.0.1."""

import json
import pickle
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch
from loopback import FileServer
from safetensors.torch import save_file

from sdcog.fetch.downloads import AdapterCache
from sdcog.fetch.references import Reference
from sdcog.security.filechecks import PICKLE_SUFFIXES, check_safetensors_header


def safetensors_bytes(tmp_path, n: int, seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    path = tmp_path / f"t{n}-{seed}.safetensors"
    save_file({"w": torch.randn(n)}, path)
    return path.read_bytes()


def cache(tmp_path, file_server, **kwargs) -> AdapterCache:
    return AdapterCache(root=tmp_path / "cache", endpoint=file_server.url, **kwargs)


def test_hit_downloads_nothing_and_survives_a_restart(tmp_path, file_server):
    url = file_server.put("dl/a.safetensors", safetensors_bytes(tmp_path, 100))
    first = cache(tmp_path, file_server).fetch(Reference.parse(url, "lora_weights"))
    again = cache(tmp_path, file_server).fetch(
        Reference.parse(url, "lora_weights")
    )  # a new process, same folder
    assert first == again and first.name.endswith(".safetensors")
    assert file_server.count("dl/a.safetensors") == 1


def test_same_content_under_two_references_is_stored_once(tmp_path, file_server):
    data = safetensors_bytes(tmp_path, 100)
    c = cache(tmp_path, file_server)
    one = c.fetch(Reference.parse(file_server.put("dl/x.safetensors", data), "lora_weights"))
    two = c.fetch(Reference.parse(file_server.put("dl/y.safetensors", data), "lora_weights"))
    assert one == two
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1


def test_least_recently_used_files_are_evicted(tmp_path, file_server):
    sizes = {name: safetensors_bytes(tmp_path, 1000, seed=i) for i, name in enumerate("abc")}
    urls = {name: file_server.put(f"lru/{name}.safetensors", data) for name, data in sizes.items()}
    c = cache(tmp_path, file_server, max_bytes=2 * len(sizes["a"]) + 10)
    paths = {}
    for name in "ab":
        paths[name] = c.fetch(Reference.parse(urls[name], "lora_weights"))
        time.sleep(0.01)
    c.fetch(Reference.parse(urls["a"], "lora_weights"))  # a is now the most recently used
    time.sleep(0.01)
    paths["c"] = c.fetch(Reference.parse(urls["c"], "lora_weights"))
    assert paths["a"].exists() and paths["c"].exists() and not paths["b"].exists()
    assert set(json.loads((tmp_path / "cache/index.json").read_text())) == {urls["a"], urls["c"]}


def test_a_file_larger_than_the_cache_is_still_served(tmp_path, file_server):
    url = file_server.put("dl/huge.safetensors", safetensors_bytes(tmp_path, 5000))
    assert (
        cache(tmp_path, file_server, max_bytes=10)
        .fetch(Reference.parse(url, "lora_weights"))
        .exists()
    )


def test_pickle_is_refused_from_its_bytes(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="lora_weights: ref is not a safetensors file"):
        check_safetensors_header(path, "lora_weights", "ref")
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)  # torch.save's zip format
    with pytest.raises(ValueError, match="not a safetensors file"):
        check_safetensors_header(path, "lora_weights", "ref")


def test_size_limit(tmp_path, file_server):
    url = file_server.put("dl/big.safetensors", safetensors_bytes(tmp_path, 10_000))
    with pytest.raises(ValueError, match="larger than the 1000 byte limit"):
        cache(tmp_path, file_server, max_file_bytes=1000).fetch(
            Reference.parse(url, "lora_weights")
        )
    assert list((tmp_path / "cache").glob("*.part")) == []


def test_timeout(tmp_path):
    class Slow(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"\0" * 1000)
                self.wfile.flush()
                time.sleep(0.05)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        c = AdapterCache(root=tmp_path / "cache", timeout_s=1)
        url = f"http://127.0.0.1:{server.server_port}/slow.safetensors"
        started = time.monotonic()
        with pytest.raises(ValueError, match="took longer than 1"):
            c.fetch(Reference.parse(url, "lora_weights"))
        assert time.monotonic() - started < 4
    finally:
        server.shutdown()


def test_hugging_face_repo_resolution(tmp_path, file_server):
    data = safetensors_bytes(tmp_path, 10)

    def siblings(*names: str) -> bytes:
        return json.dumps({"siblings": [{"rfilename": name} for name in names]}).encode()

    file_server.put("api/models/o/one", siblings("m.safetensors", "README.md"))
    file_server.put("o/one/resolve/main/m.safetensors", data)
    file_server.put("api/models/o/two", siblings("a.safetensors", "b.safetensors"))
    c = cache(tmp_path, file_server)
    assert c.fetch(Reference.parse("o/one", "lora_weights")).read_bytes() == data
    with pytest.raises(ValueError, match=r"o/two holds 2 safetensors files \(a.safetensors, b"):
        c.fetch(Reference.parse("o/two", "lora_weights"))
    with pytest.raises(ValueError, match="no Hugging Face repository o/none"):
        c.fetch(Reference.parse("o/none", "lora_weights"))
    with pytest.raises(ValueError, match="neither an http"):
        c.fetch(Reference.parse("ftp://x/y.safetensors", "textual_inversions"))


@pytest.fixture
def storage(tmp_path):
    """Another host (port) for a download to be redirected to, as civitai's are to signed URLs."""
    server = FileServer(tmp_path / "storage")
    yield server
    server.httpd.shutdown()


def civitai_download(tmp_path, file_server, storage, version: str, data: bytes, name: str) -> str:
    """civitai's api/download/models/<id>: a redirect to storage, which names the file."""
    signed = f"/files/{version}?X-Amz-Signature=abc"
    storage.put(f"files/{version}", data)
    storage.dispositions[signed] = name
    file_server.redirects[f"/api/download/models/{version}"] = storage.url + signed
    return f"{file_server.url}/api/download/models/{version}"


def test_civitai_urls_without_a_suffix_are_read_by_their_bytes(
    tmp_path, file_server, storage, monkeypatch, capsys
):
    monkeypatch.setenv("CIVITAI_TOKEN", "secret")
    data = safetensors_bytes(tmp_path, 50)
    url = civitai_download(tmp_path, file_server, storage, "34562", data, "add_detail.safetensors")
    c = cache(tmp_path, file_server, civitai=file_server.url)
    assert c.fetch(Reference.parse(url, "lora_weights")).read_bytes() == data
    assert "lora_weights: " + url + " is add_detail.safetensors" in capsys.readouterr().out
    # The token goes to civitai and not to the storage it redirects to.
    assert file_server.authorizations[-1] == ("/api/download/models/34562", "Bearer secret")
    assert storage.authorizations == [("/files/34562?X-Amz-Signature=abc", None)]
    # Runware's AIR id for the same version reaches the same download.
    assert c.fetch(Reference.parse("civitai:58390@34562", "lora_weights")).read_bytes() == data
    assert (
        c.fetch(
            Reference.parse("urn:air:sd1:lora:civitai:58390@34562", "lora_weights")
        ).read_bytes()
        == data
    )


def test_no_token_is_sent_unless_set(tmp_path, file_server, storage, monkeypatch):
    monkeypatch.delenv("CIVITAI_TOKEN", raising=False)
    url = civitai_download(tmp_path, file_server, storage, "1", safetensors_bytes(tmp_path, 5), "a")
    cache(tmp_path, file_server, civitai=file_server.url).fetch(
        Reference.parse(url, "lora_weights")
    )
    assert file_server.authorizations[-1] == ("/api/download/models/1", None)


def test_hf_token_goes_to_hugging_face_only(tmp_path, file_server, storage, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    siblings = json.dumps({"siblings": [{"rfilename": "l.safetensors"}]}).encode()
    file_server.put("api/models/o/tok", siblings)
    file_server.put("o/tok/resolve/main/l.safetensors", safetensors_bytes(tmp_path, 7))
    c = cache(tmp_path, file_server, civitai=storage.url)
    c.fetch(Reference.parse("o/tok", "lora_weights"))
    assert file_server.authorizations[-2:] == [
        ("/api/models/o/tok", "Bearer hf_x"),
        ("/o/tok/resolve/main/l.safetensors", "Bearer hf_x"),
    ]
    other = storage.put("other.safetensors", safetensors_bytes(tmp_path, 8))
    c.fetch(Reference.parse(other, "lora_weights"))
    assert storage.authorizations[-1] == ("/other.safetensors", None)


@pytest.mark.parametrize("suffix", PICKLE_SUFFIXES)
def test_pickle_suffixes_are_refused_before_any_request(tmp_path, file_server, suffix):
    before = len(file_server.requests)
    url = f"{file_server.url}/models/x{suffix.upper()}?download=1"
    with pytest.raises(ValueError, match=r"lora_weights: .* is pickled weights"):
        cache(tmp_path, file_server).fetch(Reference.parse(url, "lora_weights"))
    assert len(file_server.requests) == before


def test_pickled_files_behind_civitai_urls_are_refused(tmp_path, file_server, storage):
    c = cache(tmp_path, file_server, civitai=file_server.url)
    named = civitai_download(tmp_path, file_server, storage, "7", b"x" * 100, "model.ckpt")
    with pytest.raises(ValueError, match=r"lora_weights: .*/7 serves model.ckpt, pickled weights"):
        c.fetch(Reference.parse(named, "lora_weights"))
    unnamed = file_server.put("api/download/models/8", pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match=r"/8 is not a safetensors file"):
        c.fetch(Reference.parse(unnamed, "lora_weights"))
    assert list((tmp_path / "cache").glob("*.safetensors")) == []


def test_a_login_wall_says_which_token_to_set(tmp_path, file_server):
    file_server.statuses["/api/download/models/9"] = 401
    url = f"{file_server.url}/api/download/models/9"
    with pytest.raises(ValueError, match=r"needs a login \(401\); set CIVITAI_TOKEN"):
        cache(tmp_path, file_server, civitai=file_server.url).fetch(
            Reference.parse(url, "lora_weights")
        )


def test_civitai_com_urls_are_fetched_from_the_civitai_endpoint(tmp_path, file_server):
    # CIVITAI_ENDPOINT names a mirror (here, this test's server): civitai.com URLs go there.
    data = safetensors_bytes(tmp_path, 9)
    file_server.put("api/download/models/777", data)
    c = cache(tmp_path, file_server, civitai=file_server.url)
    assert (
        c.fetch(
            Reference.parse("https://civitai.com/api/download/models/777", "lora_weights")
        ).read_bytes()
        == data
    )
    assert file_server.requests[-1] == "/api/download/models/777"
