"""Shared fixtures: tiny weights made once per session, and Cog's real HTTP server over them."""

import base64
import io
import json
import time
from pathlib import Path

import pytest
from PIL import Image

from sdcog.local import CogServer
from sdcog.tiny import FAMILIES, write_tiny_weights

NATIVE = {"sd": 512, "sdxl": 1024}


@pytest.fixture(scope="session")
def make_weights(tmp_path_factory: pytest.TempPathFactory):
    """make(family, safety_threshold=1.0) -> a folder of tiny weights, written once per session.
    A negative threshold makes the safety checker flag every image."""
    made: dict[tuple[str, float], Path] = {}

    def make(family: str = "sd", safety_threshold: float = 1.0) -> Path:
        if (family, safety_threshold) not in made:
            directory = tmp_path_factory.mktemp(f"tiny-{family}")
            write_tiny_weights(directory, family, safety_threshold)
            made[family, safety_threshold] = directory
        return made[family, safety_threshold]

    return make


@pytest.fixture(scope="session")
def tiny_weights(make_weights) -> Path:
    return make_weights("sd")


@pytest.fixture(scope="session")
def sdxl_weights(make_weights) -> Path:
    return make_weights("sdxl")


class ServerUnderTest(CogServer):
    def __init__(self, weights: Path, log_path: Path, family: str) -> None:
        super().__init__(weights, open(log_path, "w"))
        self.family = family
        self.native = NATIVE[family]

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


def _serve(family: str, weights: Path, logs: Path):
    cog = ServerUnderTest(weights, logs / f"server-{family}.log", family)
    yield cog
    cog.stop()


@pytest.fixture(scope="session", params=FAMILIES)
def server(request, make_weights, tmp_path_factory):
    """Cog's server over tiny weights, once per model family."""
    yield from _serve(request.param, make_weights(request.param), tmp_path_factory.mktemp("logs"))


@pytest.fixture(scope="session", params=FAMILIES)
def flagging_server(request, make_weights, tmp_path_factory):
    weights = make_weights(request.param, safety_threshold=-2.0)
    yield from _serve(request.param, weights, tmp_path_factory.mktemp("logs"))


@pytest.fixture(scope="session")
def sd_server(make_weights, tmp_path_factory):
    yield from _serve("sd", make_weights("sd"), tmp_path_factory.mktemp("logs"))


@pytest.fixture(scope="session")
def sdxl_server(make_weights, tmp_path_factory):
    yield from _serve("sdxl", make_weights("sdxl"), tmp_path_factory.mktemp("logs"))


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
