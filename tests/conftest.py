"""Shared fixtures: tiny weights made once per session, and Cog's real HTTP server over them.

Tests that use one of the servers are marked `server`; with `slow` ones they are left out of
`script/test`'s fast tier (`script/test --all` runs everything, as CI does)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import ADAPTER_MAX_BYTES, ServerUnderTest, shapes
from loopback import FileServer, WebhookReceiver, dead_proxy_env

from sdcog.adapters.faces import ENTRY as FACE_DETECTOR
from sdcog.common.families import PIPELINE_KINDS
from sdcog.tools.download_weights import TEST_WEIGHTS_DIR
from sdcog.tools.tiny_weights import write_tiny_weights


@pytest.fixture(scope="session")
def face_detector() -> Path:
    """The real face detector (600 KB of ONNX), which script/env fetches once from the package
    its pin names, with download-weights' own code: the tests reach no network."""
    folder = TEST_WEIGHTS_DIR / FACE_DETECTOR
    if not (folder / ".pin.json").exists():
        pytest.fail(f"no {folder}: run script/test, or python -m "
                    "sdcog.tools.download_weights --test-weights")  # fmt: skip
    return folder


@pytest.fixture(scope="session")
def make_weights(tmp_path_factory: pytest.TempPathFactory, face_detector: Path):
    """make(family, safety_threshold=1.0) -> a folder of tiny weights, written once per session,
    with the real face detector. A negative threshold makes the safety checker flag every
    image."""
    made: dict[tuple[str, float], Path] = {}

    def make(family: str = "sd", safety_threshold: float = 1.0) -> Path:
        if (family, safety_threshold) not in made:
            directory = tmp_path_factory.mktemp(f"tiny-{family}")
            write_tiny_weights(directory, family, safety_threshold)
            shutil.copytree(face_detector, directory / FACE_DETECTOR)
            made[family, safety_threshold] = directory
        return made[family, safety_threshold]

    return make


@pytest.fixture(scope="session")
def tiny_weights(make_weights) -> Path:
    return make_weights("sd")


@pytest.fixture(scope="session")
def sdxl_weights(make_weights) -> Path:
    return make_weights("sdxl")


def _serve(family: str, weights: Path, tmp: Path, file_server: FileServer, **env: str):
    env = {
        # The test servers are on 127.0.0.1; test_netguard checks the default, strict policy.
        "ALLOW_PRIVATE_URLS": "1",
        **dead_proxy_env(),
        "HF_ENDPOINT": file_server.url,
        "CIVITAI_ENDPOINT": file_server.url,  # civitai.com URLs are fetched from here
        "ADAPTER_CACHE_DIR": str(tmp / "adapter-cache"),
        "ADAPTER_MAX_BYTES": str(ADAPTER_MAX_BYTES),
        "ADAPTER_TIMEOUT_S": "20",
        "MODEL_CACHE_DIR": str(tmp / "model-cache"),
        **env,
    }
    cog = ServerUnderTest(weights, tmp / f"server-{family}.log", family, env)
    yield cog
    cog.stop()


@pytest.fixture(scope="session")
def sd_server(make_weights, tmp_path_factory, file_server):
    yield from _serve("sd", make_weights("sd"), tmp_path_factory.mktemp("server"), file_server)


@pytest.fixture(scope="session")
def sdxl_server(make_weights, tmp_path_factory, file_server):
    yield from _serve("sdxl", make_weights("sdxl"), tmp_path_factory.mktemp("server"), file_server)


@pytest.fixture(scope="session", params=list(PIPELINE_KINDS))
def server(request):
    """Cog's server over tiny weights, for each model family: that family's one server."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture(scope="session", params=list(PIPELINE_KINDS))
def flagging_server(request, make_weights, tmp_path_factory, file_server):
    """A server whose safety checker flags every image."""
    weights = make_weights(request.param, safety_threshold=-2.0)
    yield from _serve(request.param, weights, tmp_path_factory.mktemp("server"), file_server)


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


@pytest.fixture(autouse=True, scope="session")
def in_process_policy():
    """The settings in-process tests run with (Settings.from_env, read when a Generator or an
    AdapterCache is made): they fetch from 127.0.0.1 and pass local files; test_netguard and
    test_transfer give their policies as arguments. Anything else goes to the dead proxy."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in dead_proxy_env().items():
            patch.setenv(name, value)
        patch.setenv("ALLOW_PRIVATE_URLS", "1")
        patch.setenv("ALLOW_LOCAL_INPUT_PATHS", "1")
        yield


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


@pytest.fixture(scope="session")
def models_server(make_weights, tmp_path_factory, file_server, model_repos):
    """An SD server whose requests may name other models: from the hub-shaped endpoint, the
    file server (also as civitai), within an allow-list."""
    tmp = tmp_path_factory.mktemp("server")
    allowed = "org/*,emilianJR/*,civitai:*,http://127.0.0.1:*"
    hub = {"HF_ENDPOINT": model_repos.hub.url, "ALLOWED_MODELS": allowed}
    yield from _serve("sd", make_weights("sd"), tmp, file_server, **hub)


@pytest.fixture(scope="session")
def hub_strict_server(make_weights, tmp_path_factory, file_server, model_repos):
    """An SD server with the default, strict policy whose HF_ENDPOINT (the operator's mirror,
    trusted) is the hub-shaped server on 127.0.0.1; civitai is the public one."""
    tmp = tmp_path_factory.mktemp("server")
    env = {"ALLOW_PRIVATE_URLS": "0", "HF_ENDPOINT": model_repos.hub.url,
           "CIVITAI_ENDPOINT": "https://civitai.com", "ALLOWED_MODELS": "org/*"}  # fmt: skip
    yield from _serve("sd", make_weights("sd"), tmp, file_server, **env)


@pytest.fixture(scope="session")
def model_repos(tiny_weights, file_server, tmp_path_factory):
    """Models of every family to name as base_model or vae (tests/model_repos.py)."""
    from model_repos import make_model_repos

    repos = make_model_repos(tmp_path_factory.mktemp("model-repos"), tiny_weights, file_server)
    yield repos
    repos.hub.httpd.shutdown()


SERVER_FIXTURES = {"server", "sd_server", "sdxl_server", "flagging_server", "strict_server",
                   "loopback_only_server", "models_server", "hub_strict_server"}  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)
