"""Shared fixtures: tiny weights made once per session, and Cog's real HTTP server over them."""

import base64
import io
import json
import time
from pathlib import Path

import pytest
from PIL import Image

from sdcog.local import CogServer
from sdcog.tiny import write_tiny_weights


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-weights")
    write_tiny_weights(directory)
    return directory


@pytest.fixture(scope="session")
def flagging_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny weights whose safety checker flags every image."""
    directory = tmp_path_factory.mktemp("flagging-weights")
    write_tiny_weights(directory, safety_threshold=-2.0)
    return directory


class ServerUnderTest(CogServer):
    def __init__(self, weights: Path, log_path: Path) -> None:
        super().__init__(weights, open(log_path, "w"))

    def predict(self, **input) -> dict:
        """A sync prediction; asserts only that the server answered 200.

        Cog's server can answer 409 (busy) for a moment after it has returned a failed
        prediction: seen once in CI right after a fast failure. Clients retry a 409; so does this,
        for a bounded time, so a server that stays busy still fails the test.
        """
        deadline = time.monotonic() + 10
        while (response := self.post(input)).status_code == 409 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert response.status_code == 200, response.text
        return response.json()

    def stop(self) -> None:
        super().stop()
        self.log.close()


@pytest.fixture(scope="session")
def server(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    cog = ServerUnderTest(tiny_weights, tmp_path_factory.mktemp("logs") / "server.log")
    yield cog
    cog.stop()


@pytest.fixture(scope="session")
def flagging_server(flagging_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    cog = ServerUnderTest(flagging_weights, tmp_path_factory.mktemp("logs") / "flagging-server.log")
    yield cog
    cog.stop()


def data_uri(image: Image.Image, format: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    mime = {"PNG": "image/png", "JPEG": "image/jpeg"}[format]
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def decode_output(uri: str) -> bytes:
    assert uri.startswith("data:"), uri[:80]
    return base64.b64decode(uri.split(",", 1)[1])


def output_images(result: dict) -> list[Image.Image]:
    assert result["status"] == "succeeded", json.dumps(result)[:2000]
    return [Image.open(io.BytesIO(decode_output(uri))) for uri in result["output"]]


@pytest.fixture(scope="session")
def file_server():
    """Serves images from a real HTTP server on 127.0.0.1; returns a function image -> URL."""
    import threading
    from http.server import HTTPServer, SimpleHTTPRequestHandler
    from tempfile import TemporaryDirectory

    with TemporaryDirectory() as root:

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=root, **kwargs)

            def log_message(self, *args):
                pass

        httpd = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        count = iter(range(10**6))

        def serve(image: Image.Image) -> str:
            name = f"image-{next(count)}.png"
            image.save(Path(root) / name)
            return f"http://127.0.0.1:{httpd.server_port}/{name}"

        yield serve
        httpd.shutdown()
