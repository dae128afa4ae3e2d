"""Which files of a Hugging Face repository a model download takes (a pipeline's configs and
tokenizers, then the safetensors weights of the components it has), and what the hub's answer
must be for them to be fetched: a commit, a bounded listing, plain relative file names. Every
refusal names the input."""

import re
from pathlib import Path

from huggingface_hub.hf_api import ModelInfo

from ..request.model_choice import ModelReference
from ..security.filechecks import PICKLE_SUFFIXES

# Weights and the index of sharded weights, with diffusers' fp16 variant marker or without.
WEIGHTS = re.compile(
    r".+?(?P<fp16>\.fp16)?\.safetensors|.+\.safetensors\.index(?P<fp16i>\.fp16)?\.json"
)
# What a repository may be: files in its listing, and files fetched of it (a pipeline's
# configs, tokenizers and weights: about 30 for SDXL).
MAX_LISTED_FILES = 1000
MAX_FETCHED_FILES = 64
# A file name in a listing: a plain relative path (no "..", no backslash, no absolute path).
FILE_NAME = re.compile(r"(?:[\w.-]+/)*[\w.-]+")
COMMIT = re.compile(r"[0-9a-f]{40}")


def listing(info: ModelInfo, reference: ModelReference) -> tuple[dict[str, int | None], str]:
    """The repository's files (name -> size, when the hub says) and its commit, refused naming
    the input where they are not what a Hugging Face hub answers."""
    what, name = reference.input_name, reference.name
    if not isinstance(info.sha, str) or not COMMIT.fullmatch(info.sha):
        raise ValueError(
            f"{what}: {name}: the hub's answer names no commit (is HF_ENDPOINT a Hugging Face hub?)"
        )
    siblings = info.siblings or []
    if len(siblings) > MAX_LISTED_FILES:
        raise ValueError(
            f"{what}: {name} lists {len(siblings)} files; a model repository may list at most "
            f"{MAX_LISTED_FILES}"
        )
    return {s.rfilename: s.size for s in siblings}, info.sha


def check_files(reference: ModelReference, files: list[str]) -> None:
    """Before they are fetched: few enough, each a plain relative path."""
    what, name = reference.input_name, reference.name
    if len(files) > MAX_FETCHED_FILES:
        raise ValueError(
            f"{what}: {name} would take {len(files)} files to load; a model may take at most "
            f"{MAX_FETCHED_FILES}"
        )
    for path in files:
        if not FILE_NAME.fullmatch(path) or {".", ".."} & set(path.split("/")):
            raise ValueError(
                f"{what}: {name} lists a file named {path[:100]!r}, which is not a plain "
                "relative path"
            )


def is_config(path: str, folders: list[str], input_name: str) -> bool:
    """model_index.json and each component's configs and tokenizer files (JSON and text)."""
    if input_name == "vae":
        return path in ("config.json", "vae/config.json")
    folder, _, name = path.rpartition("/")
    if not folder:
        return name == "model_index.json"
    return (
        "/" not in folder
        and ".index" not in name
        and name.endswith((".json", ".txt"))
        and (folder in folders or folder.startswith(("tokenizer", "scheduler")))
    )


def weight_files(
    files: list[str], work: Path, folders: list[str], fp16: bool, reference: ModelReference
) -> tuple[list[str], str | None]:
    """The safetensors weights of each component there is a config of, and their variant: fp16
    when `fp16` and every component has it, else full precision. A component with pickled
    weights only is refused, naming the input."""
    chosen: list[dict[bool, list[str]]] = []
    for component in folders:
        if component and not (work / component / "config.json").exists():
            continue  # a component the pipeline does not have
        prefix = f"{component}/" if component else ""
        own = [f for f in files if f.startswith(prefix) and "/" not in f[len(prefix) :]]
        by_variant: dict[bool, list[str]] = {False: [], True: []}
        for path in own:
            if match := WEIGHTS.fullmatch(path[len(prefix) :]):
                by_variant[bool(match["fp16"] or match["fp16i"])].append(path)
        if not by_variant[False] and not by_variant[True]:
            pickled = [f for f in own if f.lower().endswith(PICKLE_SUFFIXES)]
            found = f"only pickled weights ({', '.join(pickled)})" if pickled else "no weights"
            raise ValueError(
                f"{reference.input_name}: {reference.name}: its {component or 'VAE'} has "
                f"{found}; only .safetensors files are loaded"
            )
        chosen.append(by_variant)
    has = {precision: all(v[precision] for v in chosen) for precision in (False, True)}
    variant = has[True] and (fp16 or not has[False])
    files = [f for v in chosen for f in (v[variant] or v[not variant])]
    return files, "fp16" if variant else None
