"""Pinned weights: the pin file, and downloads that are resumable, safetensors-only and checked.

weights/pins.toml names each model (an entry) by repository, revision and files. Entry NAME is
downloaded to weights/NAME/ in the repository's own layout. The sha256 of every file is recorded
in weights/SHA256SUMS.json on first download and checked on every later run.
"""

import hashlib
import json
import os
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import requests
from safetensors import safe_open

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
PIN_FILE = DEFAULT_WEIGHTS_DIR / "pins.toml"
SUMS_FILE = "SHA256SUMS.json"
CHUNK = 1 << 20
TIMEOUT_S = 60

# A Stable Diffusion 1.x/2.x model in diffusers' layout: what an entry downloads unless it
# lists its own files.
SD_FILES = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]
# Only these may hold tensors: pickles (.ckpt, .bin, .pt, .pth) are never loaded.
WEIGHT_SUFFIX = ".safetensors"
DATA_SUFFIXES = {".json", ".txt", WEIGHT_SUFFIX}


@dataclass(frozen=True)
class Pin:
    name: str
    repo: str
    revision: str
    files: list[str] = field(default_factory=lambda: list(SD_FILES))

    def __post_init__(self) -> None:
        for path in self.files:
            if Path(path).suffix not in DATA_SUFFIXES:
                raise ValueError(
                    f"pin {self.name}: {path} is not safetensors, JSON or text; pickled weights "
                    "(.ckpt, .bin, .pt) are never downloaded"
                )

    def url(self, path: str, endpoint: str) -> str:
        return f"{endpoint.rstrip('/')}/{self.repo}/resolve/{self.revision}/{path}"


def read_pins(pin_file: Path = PIN_FILE) -> list[Pin]:
    with open(pin_file, "rb") as f:
        table = tomllib.load(f)
    return [Pin(name=name, **entry) for name, entry in table.items()]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, headers: dict[str, str] | None = None) -> None:
    """Fetch url to dest through dest.part, resuming a partial download with a Range request."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    request_headers = dict(headers or {})
    if have:
        request_headers["Range"] = f"bytes={have}-"
    with requests.get(url, headers=request_headers, stream=True, timeout=TIMEOUT_S) as response:
        if response.status_code == 416:  # the part file already holds everything
            part.rename(dest)
            return
        response.raise_for_status()
        mode = "ab" if response.status_code == 206 else "wb"  # 200: the server restarted it
        with open(part, mode) as f:
            for chunk in response.iter_content(CHUNK):
                f.write(chunk)
    part.rename(dest)


def check_safetensors(path: Path) -> None:
    """Parse the header: a truncated file or an HTML error page fails here, not at load time."""
    try:
        with safe_open(path, framework="pt") as f:
            f.keys()
    except Exception as e:
        raise ValueError(f"{path} is not a valid safetensors file: {e}") from None


class Sums:
    """weights/SHA256SUMS.json: url -> sha256, written on first download, checked after."""

    def __init__(self, weights_dir: Path) -> None:
        self.path = weights_dir / SUMS_FILE
        self.sums: dict[str, str] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def check_or_record(self, url: str, path: Path) -> str:
        actual = sha256(path)
        expected = self.sums.get(url)
        if expected is None:
            self.sums[url] = actual
            self.path.write_text(json.dumps(self.sums, indent=2, sort_keys=True) + "\n")
        elif expected != actual:
            raise ValueError(
                f"{path}: sha256 {actual} differs from {expected} recorded when {url} was first "
                f"downloaded. Delete the file to fetch it again, or its line in {self.path} if "
                "the change is intended."
            )
        return actual


def fetch_pin(pin: Pin, weights_dir: Path, endpoint: str, sums: Sums) -> None:
    """Bring weights/<pin.name>/ to exactly the pinned files, downloading only what is missing."""
    target = weights_dir / pin.name
    stamp = target / ".pin.json"
    wanted = json.dumps({"repo": pin.repo, "revision": pin.revision, "files": pin.files})
    if target.exists() and (not stamp.exists() or stamp.read_text() != wanted):
        print(f"{pin.name}: the pin changed; removing the old {target}")
        shutil.rmtree(target)
    headers = (
        {"Authorization": f"Bearer {os.environ['HF_TOKEN']}"} if "HF_TOKEN" in os.environ else {}
    )
    for path in pin.files:
        url = pin.url(path, endpoint)
        dest = target / path
        if not dest.exists():
            print(f"{pin.name}: downloading {path}")
            download(url, dest, headers)
        if dest.suffix == WEIGHT_SUFFIX:
            try:
                check_safetensors(dest)
            except ValueError:
                dest.unlink()  # a broken download is fetched again next run
                raise
        digest = sums.check_or_record(url, dest)
        print(f"{pin.name}: {path} sha256 {digest[:16]}... ok")
    stamp.write_text(wanted)


def download_weights(
    weights_dir: Path = DEFAULT_WEIGHTS_DIR, pin_file: Path = PIN_FILE, endpoint: str | None = None
) -> None:
    endpoint = endpoint or os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    weights_dir.mkdir(parents=True, exist_ok=True)
    sums = Sums(weights_dir)
    for pin in read_pins(pin_file):
        fetch_pin(pin, weights_dir, endpoint, sums)
