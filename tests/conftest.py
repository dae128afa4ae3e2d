"""Shared fixtures: tiny weights made once per session, and Cog's real HTTP server over them."""

from __future__ import annotations

import base64
import functools
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from loopback import FileServer, WebhookReceiver, dead_proxy_env
from PIL import Image

from sdcog.pipelines import FAMILIES
from sdcog.protocol import error_message
from sdcog.tools import cli
from sdcog.tools.cog_server import CogServer, RunningServer
from sdcog.tools.tiny_weights import write_tiny_weights

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
    def __init__(self, weights: Path, log_path: Path, family: str, env: dict[str, str]) -> None:
        super().__init__(weights, open(log_path, "w"), env=env)
        self.family = family
        self.native = NATIVE[family]

    def predict(self, **input) -> dict:
        """A sync prediction; asserts only that the server answered 200 (never 409: see
        sdcog/runner.py, and test_100_back_to_back_requests_never_see_409)."""
        response = self.post(input)
        assert response.status_code == 200, response.text
        return response.json()

    def failure(self, **input) -> str:
        """The error of a prediction that must fail, as predict() raised it (no Cog prefixes)."""
        result = self.predict(**input)
        assert result["status"] == "failed", result.get("logs")
        return error_message(result["error"])

    def stop(self) -> None:
        super().stop()
        self.log.close()


# Tiny LoRAs and ControlNets (SDXL union: 6 MB) are smaller; the oversize test serves more.
ADAPTER_MAX_BYTES = 8_000_000


def _serve(family: str, weights: Path, tmp: Path, file_server: FileServer, **env: str):
    env = {
        # The test servers are on 127.0.0.1; test_netguard checks the default, strict policy.
        "ALLOW_PRIVATE_URLS": "1",
        **dead_proxy_env(),
        **env,
        "HF_ENDPOINT": file_server.url,
        "CIVITAI_ENDPOINT": file_server.url,  # civitai.com URLs are fetched from here
        "ADAPTER_CACHE_DIR": str(tmp / "adapter-cache"),
        "ADAPTER_MAX_BYTES": str(ADAPTER_MAX_BYTES),
        "ADAPTER_TIMEOUT_S": "20",
    }
    cog = ServerUnderTest(weights, tmp / f"server-{family}.log", family, env)
    yield cog
    cog.stop()


@pytest.fixture(scope="session", params=FAMILIES)
def server(request, make_weights, tmp_path_factory, file_server):
    """Cog's server over tiny weights, once per model family."""
    weights = make_weights(request.param)
    yield from _serve(request.param, weights, tmp_path_factory.mktemp("server"), file_server)


@pytest.fixture(scope="session", params=FAMILIES)
def flagging_server(request, make_weights, tmp_path_factory, file_server):
    weights = make_weights(request.param, safety_threshold=-2.0)
    yield from _serve(request.param, weights, tmp_path_factory.mktemp("server"), file_server)


@pytest.fixture(scope="session")
def sd_server(make_weights, tmp_path_factory, file_server):
    yield from _serve("sd", make_weights("sd"), tmp_path_factory.mktemp("server"), file_server)


@pytest.fixture(scope="session")
def sdxl_server(make_weights, tmp_path_factory, file_server):
    yield from _serve("sdxl", make_weights("sdxl"), tmp_path_factory.mktemp("server"), file_server)


@pytest.fixture(scope="session")
def strict_server(make_weights, tmp_path_factory, file_server):
    """An SD server with the default policy: no private URLs, no server paths for file inputs."""
    tmp = tmp_path_factory.mktemp("server")
    yield from _serve("sd", make_weights("sd"), tmp, file_server, ALLOW_PRIVATE_URLS="0")


@pytest.fixture(scope="session")
def loopback_only_server(make_weights, tmp_path_factory, file_server):
    """An SD server that allows 127.0.0.1 and no other private address."""
    tmp = tmp_path_factory.mktemp("server")
    yield from _serve("sd", make_weights("sd"), tmp, file_server, ALLOW_PRIVATE_URLS="127.0.0.1")


def cli_predict(server: CogServer) -> Callable[[dict], dict]:
    """script/task's way of running one prediction (async, its logs shown), on `server`."""
    return functools.partial(cli.run, RunningServer(server.url))


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


@pytest.fixture(autouse=True)
def in_process_policy(monkeypatch):
    """In-process tests fetch from 127.0.0.1 and pass local files; test_netguard undoes this to
    check the default policy. Anything else goes to the dead proxy."""
    for name, value in dead_proxy_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "1")
    monkeypatch.setenv("ALLOW_LOCAL_INPUT_PATHS", "1")


@pytest.fixture(scope="session")
def file_server(tmp_path_factory):
    files = FileServer(tmp_path_factory.mktemp("served"))
    yield files
    files.httpd.shutdown()


@pytest.fixture
def webhooks():
    receiver = WebhookReceiver()
    yield receiver
    receiver.httpd.shutdown()


@pytest.fixture(scope="session")
def control_image(tmp_path_factory) -> Path:
    """A 128x128 picture of shapes: edges for every annotator."""
    from test_annotators import shapes

    path = tmp_path_factory.mktemp("control") / "shapes.png"
    shapes((128, 128)).save(path)
    return path


@pytest.fixture(scope="session")
def adapter_refs(make_weights, file_server, tmp_path_factory):
    """family -> name -> reference, for LoRAs and embeddings served by file_server."""
    from adapter_files import write_embedding, write_lora

    tmp = tmp_path_factory.mktemp("adapters")
    refs: dict[str, dict[str, str]] = {}
    for family in ("sd", "sdxl"):
        weights = make_weights(family)
        made = {
            "a": write_lora(weights, family, tmp / f"{family}-a.safetensors", seed=1),
            "b": write_lora(weights, family, tmp / f"{family}-b.safetensors", seed=7),
            "kohya": write_lora(weights, family, tmp / f"{family}-k.safetensors", 3, kohya=True),
            "embedding": write_embedding(family, tmp / f"{family}-e.safetensors", "<tok>", seed=9),
            "narrow": write_embedding(family, tmp / f"{family}-n.safetensors", "<n>", 9, width=16),
        }
        refs[family] = {
            name: file_server.put(f"{family}/{path.name}", path.read_bytes())
            for name, path in made.items()
        }
        # The same LoRA as a Hugging Face repository owner/lora-<family>.
        repo = f"tester/lora-{family}"
        file_server.put(
            f"api/models/{repo}",
            json.dumps(
                {
                    "siblings": [
                        {"rfilename": "pytorch_lora_weights.safetensors"},
                        {"rfilename": "README.md"},
                    ]
                }
            ).encode(),  # fmt: skip
        )
        file_server.put(f"{repo}/resolve/main/pytorch_lora_weights.safetensors",
                        made["a"].read_bytes())  # fmt: skip
        refs[family]["repo"] = repo
        refs[family]["a_bytes"] = made["a"].read_bytes()
    return refs
