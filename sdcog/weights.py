"""Pinned weights: the pin file, and downloads that are resumable, safetensors-only and checked.

weights/pins.toml names each model (an entry) by repository, revision and files, or by the URL of
a single-file .safetensors checkpoint plus the diffusers repository whose configs describe it.
Entry NAME ends up in weights/NAME/ in diffusers' layout (a single file is converted once). The
sha256 of every file is recorded in weights/SHA256SUMS.json on first download and checked on
every later run.
"""

import hashlib
import json
import os
import shutil
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests
from safetensors import safe_open

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
PIN_FILE = DEFAULT_WEIGHTS_DIR / "pins.toml"
SUMS_FILE = "SHA256SUMS.json"
CHUNK = 1 << 20
TIMEOUT_S = 60

# Only these may hold tensors: pickles (.ckpt, .bin, .pt, .pth) are never loaded. ONNX (the pose
# annotator) is a protobuf graph that onnxruntime reads as data.
WEIGHT_SUFFIX = ".safetensors"
DATA_SUFFIXES = {".json", ".txt", ".onnx", WEIGHT_SUFFIX}

# The files of each kind of component in a diffusers repository. An entry without `files` gets
# those of every component its model_index.json names.
COMPONENT_FILES = {
    "CLIPTextModel": ["config.json", "model.safetensors"],
    "CLIPTextModelWithProjection": ["config.json", "model.safetensors"],
    "CLIPTokenizer": [
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.json",
    ],
    "UNet2DConditionModel": ["config.json", "diffusion_pytorch_model.safetensors"],
    "AutoencoderKL": ["config.json", "diffusion_pytorch_model.safetensors"],
}
# Pinned as entries of their own ([safety]) or unused.
NOT_DOWNLOADED = {"safety_checker", "feature_extractor", "image_encoder"}


def component_files(model_index: dict, skip: set[str], weights: bool = True) -> list[str]:
    """The repository files of a pipeline's components, less those in `skip`."""
    files = ["model_index.json"]
    for name, spec in model_index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[1] is None:
            continue
        if name in skip or name in NOT_DOWNLOADED:
            continue
        kind = spec[1]
        if kind.endswith("Scheduler"):
            names = ["scheduler_config.json"]
        elif kind in COMPONENT_FILES:
            names = COMPONENT_FILES[kind]
        else:
            raise ValueError(
                f"component {name} ({kind}) has no known files: list `files` in its pin"
            )
        files += [f"{name}/{n}" for n in names if weights or not n.endswith(WEIGHT_SUFFIX)]
    return files


@dataclass(frozen=True)
class Pin:
    name: str
    repo: str
    revision: str
    files: list[str] | None = None  # None: every component's files, from model_index.json
    air: list[str] = field(default_factory=list)  # other names of these weights (see _stamp)

    def __post_init__(self) -> None:
        for path in self.files or []:
            if Path(path).suffix not in DATA_SUFFIXES:
                raise ValueError(
                    f"pin {self.name}: {path} is not safetensors, ONNX, JSON or text; pickled "
                    "weights (.ckpt, .bin, .pt) are never downloaded"
                )

    def url(self, path: str, endpoint: str) -> str:
        return f"{endpoint.rstrip('/')}/{self.repo}/resolve/{self.revision}/{path}"


@dataclass(frozen=True)
class SingleFilePin:
    """A single-file checkpoint (original/civitai layout), converted once to diffusers' layout
    with the configs and tokenizer of a pinned diffusers repository of the same architecture."""

    name: str
    url: str
    config_repo: str
    config_revision: str
    air: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.url.split("?")[0].endswith(WEIGHT_SUFFIX):
            raise ValueError(
                f"pin {self.name}: {self.url} is not a .safetensors file; pickled checkpoints "
                "(.ckpt, .bin, .pt) are never downloaded"
            )


def read_pins(pin_file: Path = PIN_FILE) -> list[Pin | SingleFilePin]:
    with open(pin_file, "rb") as f:
        table = tomllib.load(f)
    return [
        SingleFilePin(name=name, **entry) if "url" in entry else Pin(name=name, **entry)
        for name, entry in table.items()
    ]


def _auth_headers() -> dict[str, str]:
    token = os.environ.get("HF_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


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


def _is_current(target: Path, wanted: str) -> bool:
    """Whether target/ holds what the pin `wanted` describes; if not, clear what is there."""
    stamp = target / ".pin.json"
    if stamp.exists() and stamp.read_text() == wanted:
        return True
    if target.exists():
        print(f"{target.name}: the pin changed; removing the old {target}")
        shutil.rmtree(target)
    return False


def _fetch_repo(pin: Pin, target: Path, endpoint: str, sums: Sums, skip: set[str],
                weights: bool = True) -> None:  # fmt: skip
    """The pin's files, or without a list the files of its model_index.json's components."""
    files = pin.files
    if files is None:
        _fetch_file(pin.url("model_index.json", endpoint), target / "model_index.json", sums)
        files = component_files(
            json.loads((target / "model_index.json").read_text()), skip, weights
        )
    for path in files:
        _fetch_file(pin.url(path, endpoint), target / path, sums)


def fetch_pin(pin: Pin, weights_dir: Path, endpoint: str, sums: Sums, skip: set[str]) -> None:
    """Bring weights/<pin.name>/ to exactly the pinned files, downloading only what is missing.
    Components in `skip` are left out: other entries of the pin file replace them."""
    target = weights_dir / pin.name
    wanted = _stamp(pin, skip=sorted(skip))
    _is_current(target, wanted)  # downloads are checked file by file either way
    _fetch_repo(pin, target, endpoint, sums, skip)
    (target / ".pin.json").write_text(wanted)


def _stamp(pin: Pin | SingleFilePin, **extra: object) -> str:
    """What a fetched entry was fetched as. `air` (the AIR ids other systems' requests may name
    the weights by, e.g. "civitai:4384@128713") is left out: naming them fetches nothing."""
    return json.dumps({k: v for k, v in asdict(pin).items() if k != "air"} | extra)


def _fetch_file(url: str, dest: Path, sums: Sums) -> None:
    if not dest.exists():
        print(f"downloading {url}")
        download(url, dest, _auth_headers())
    if dest.suffix == WEIGHT_SUFFIX:
        try:
            check_safetensors(dest)
        except ValueError:
            dest.unlink()  # a broken download is fetched again next run
            raise
    digest = sums.check_or_record(url, dest)
    print(f"{dest}: sha256 {digest[:16]}... ok")


def fetch_single_file(pin: SingleFilePin, weights_dir: Path, endpoint: str, sums: Sums) -> None:
    """Download and convert once; later runs check the converted files' recorded sha256."""
    target = weights_dir / pin.name
    stamp = target / ".pin.json"
    wanted = _stamp(pin)
    if not _is_current(target, wanted):
        work = weights_dir / f".{pin.name}-single-file"
        checkpoint = work / "checkpoint.safetensors"
        _fetch_file(pin.url, checkpoint, sums)
        config = Pin(f"{pin.name}-config", pin.config_repo, pin.config_revision)
        _fetch_repo(config, work / "config", endpoint, sums, set(), weights=False)
        print(f"{pin.name}: converting {pin.url} to diffusers' layout")
        convert_single_file(checkpoint, work / "config", target)
        shutil.rmtree(work)
        stamp.write_text(wanted)
    for path in sorted(target.rglob("*")):
        if path.is_file() and path != stamp:
            sums.check_or_record(f"{pin.url}#{path.relative_to(target)}", path)


def convert_single_file(checkpoint: Path, config_dir: Path, target: Path) -> None:
    import diffusers  # only conversion needs it

    model_index = json.loads((config_dir / "model_index.json").read_text())
    pipeline_class = getattr(diffusers, model_index["_class_name"])
    skipped = {
        name: None for name in ("safety_checker", "feature_extractor") if name in model_index
    }
    pipe = pipeline_class.from_single_file(
        checkpoint, config=str(config_dir), local_files_only=True, **skipped
    )
    pipe.save_pretrained(target, safe_serialization=True)


def download_weights(
    weights_dir: Path = DEFAULT_WEIGHTS_DIR, pin_file: Path = PIN_FILE, endpoint: str | None = None
) -> None:
    endpoint = endpoint or os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    weights_dir.mkdir(parents=True, exist_ok=True)
    sums = Sums(weights_dir)
    pins = read_pins(pin_file)
    names = {pin.name for pin in pins}
    for pin in pins:
        if isinstance(pin, SingleFilePin):
            fetch_single_file(pin, weights_dir, endpoint, sums)
        else:
            # An entry named after a component replaces it (e.g. [vae] the base model's VAE).
            fetch_pin(pin, weights_dir, endpoint, sums, skip=names - {pin.name})
