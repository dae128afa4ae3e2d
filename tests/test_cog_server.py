"""What the pinned Cog server (0.23.1) does that this package cannot change, as the README's
security notes describe it with their mitigations. A Cog upgrade that fixes one fails here, so
the notes (and script/serve's supervisor) get updated."""

import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
import requests

from conftest import ServerUnderTest
from sdcog.runner import SLOTS

SMALL = {"prompt": "x", "width": 128, "height": 128, "num_inference_steps": 2}


def health(server) -> str:
    return requests.get(f"{server.url}/health-check", timeout=5).json()["status"]


def test_unusable_ids_leak_slots_and_a_killed_worker_is_never_replaced(make_weights, tmp_path):
    # Its own server: this leaves it wedged.
    server = ServerUnderTest(make_weights("sd"), tmp_path / "server.log", "sd", env={})
    try:
        # An id with a NUL byte, or too long for a folder name, fails before predict() and
        # keeps its slot: SLOTS such requests and every later one gets 409 until a restart.
        for n in range(SLOTS):
            bad = f"evil\u0000{n}" if n % 2 else "x" * 300 + str(n)
            body = {"id": bad, "input": SMALL}
            answer = requests.post(f"{server.url}/predictions", json=body, timeout=60).json()
            assert answer["status"] == "failed" and ("NUL" in answer["error"]
                                                     or "too long" in answer["error"])  # fmt: skip
        for _ in range(3):
            assert server.post(SMALL).status_code == 409
        assert health(server) == "BUSY"
        # A killed worker is left a zombie, the server UNHEALTHY, for good.
        worker = psutil.Process(server.process.pid).children()[0]
        worker.kill()
        for _ in range(5):
            time.sleep(1)
            assert health(server) == "UNHEALTHY"
            assert worker.status() == psutil.STATUS_ZOMBIE
    finally:
        server.stop()


@pytest.mark.parametrize("shape", ["../../{name}", "/tmp/{name}/abs"])
def test_an_id_that_is_a_path_makes_folders_there(sd_server, shape):
    name = f"sdcog-id-{uuid.uuid4().hex[:8]}"
    bad = shape.format(name=name)
    answer = requests.post(f"{sd_server.url}/predictions", json={"id": bad, "input": SMALL},
                           timeout=60)  # fmt: skip
    assert answer.json()["status"] == "succeeded"
    made = Path("/tmp", name) / ("abs" if bad.startswith("/") else "")
    try:
        assert sorted(p.name for p in made.iterdir()) == ["inputs", "outputs"]
    finally:
        for folder in (made / "inputs", made / "outputs", made, Path("/tmp", name)):
            if folder.exists():
                folder.rmdir()


def test_file_inputs_are_downloaded_with_no_size_or_time_bound(sd_server):
    sent = {"bytes": 0}

    class Endless(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path == "/big.png":  # 64 MiB, never an image
                self.send_response(200)
                self.send_header("Content-Length", str(64 << 20))
                self.end_headers()
                for _ in range(64):
                    self.wfile.write(b"\0" * (1 << 20))
                    sent["bytes"] += 1 << 20
            else:  # 40 bytes at 6 a second
                self.send_response(200)
                self.send_header("Content-Length", "40")
                self.end_headers()
                for _ in range(40):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    sent["bytes"] += 1
                    time.sleep(1 / 6)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_port}"
    try:
        answer = sd_server.post({**SMALL, "image": f"{base}/big.png"})
        assert sent["bytes"] == 64 << 20  # all of it, though no image input needs that much
        assert answer.json()["status"] == "failed"
        sent["bytes"] = 0
        started = time.monotonic()
        sd_server.post({**SMALL, "image": f"{base}/slow.png"})
        assert sent["bytes"] == 40 and time.monotonic() - started > 6
    finally:
        httpd.shutdown()


def test_webhooks_are_delivered_to_private_addresses(strict_server, webhooks):
    # This server refuses private URLs for the inputs it fetches; Cog's webhooks are its own.
    answer = strict_server.post(SMALL, headers={"Prefer": "respond-async"}, webhook=webhooks.url,
                                webhook_events_filter=["completed"])  # fmt: skip
    assert answer.status_code == 202
    assert webhooks.url.startswith("http://127.0.0.1:")
    assert webhooks.final()["status"] == "succeeded"
