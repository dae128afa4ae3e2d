"""Models a request may name as base_model or vae, served from loopback: Hugging Face-shaped
repositories on a HubServer (HF_ENDPOINT) and single-file checkpoints in the original layout on a
FileServer, also as civitai's download API (CIVITAI_ENDPOINT)."""

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from ldm_checkpoint import write_ldm_checkpoint
from loopback import FileServer, HubServer
from safetensors.torch import load_file, save_file

from sdcog.models.model_files import ModelFiles
from sdcog.serving.settings import Settings
from sdcog.tools.tiny_models import write_tiny_model

# civitai version ids of the single files (api/download/models/<id>)
CIVITAI_VERSIONS = {"sd1": 101, "sd2": 202, "sdxl": 303}


@dataclass
class ModelRepos:
    hub: HubServer
    files: FileServer
    urls: dict[str, str]  # family -> URL of its single-file checkpoint
    root: Path

    def air(self, family: str) -> str:
        return f"civitai:{CIVITAI_VERSIONS[family] * 10}@{CIVITAI_VERSIONS[family]}"


def make_model_repos(root: Path, pinned: Path, files: FileServer) -> ModelRepos:
    """org/sd1, org/sd2, org/sdxl (tiny models of each family, weights from seed 1),
    org/pinned-copy (the build's own base model, as another repository), org/pickles (weights as
    .bin only), org/sd1-fp16 (fp16 variant files beside the full ones), org/vae-sd and
    org/vae-sdxl (VAE repositories, laid out as madebyollin's and stabilityai's); and the
    single files of sd1, sd2 and sdxl."""
    repos = root / "hub"
    for family in ("sd1", "sd2", "sdxl"):
        write_tiny_model(repos / "org" / family, family)
    shutil.copytree(pinned / "base", repos / "org/pinned-copy")
    # The model of Crynux's documented task (a tiny SD 1.x in its place)
    shutil.copytree(repos / "org/sd1", repos / "emilianJR/chilloutmix_NiPrunedFp32Fix")
    (repos / "org/pinned-copy/.pin.json").unlink(missing_ok=True)
    shutil.copytree(repos / "org/sd1", repos / "org/pickles")
    unet = repos / "org/pickles/unet"
    torch.save(
        load_file(unet / "diffusion_pytorch_model.safetensors"),
        unet / "diffusion_pytorch_model.bin",
    )
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    shutil.copytree(repos / "org/sd1", repos / "org/sd1-fp16")
    for path in list((repos / "org/sd1-fp16").rglob("*.safetensors")):
        half = {k: v.half() for k, v in load_file(path).items()}
        save_file(half, path.with_name(path.name.replace(".safetensors", ".fp16.safetensors")))
    for name, family in (("vae-sd", "sd1"), ("vae-sdxl", "sdxl")):
        torch.manual_seed(5)
        config = AutoencoderKL.load_config(repos / "org" / family / "vae")
        AutoencoderKL.from_config(config).save_pretrained(
            repos / "org" / name, safe_serialization=True
        )
    urls = {}
    for family, version in CIVITAI_VERSIONS.items():
        path = root / f"{family}.safetensors"
        write_ldm_checkpoint(repos / "org" / family, path)
        urls[family] = files.put(f"models/{family}-ldm.safetensors", path.read_bytes())
        files.put(f"api/download/models/{version}", path.read_bytes())
    return ModelRepos(HubServer(repos), files, urls, root)


def index_of(repo: Path) -> dict:
    return json.loads((repo / "model_index.json").read_text())


def hub_copy(repos: ModelRepos, name: str) -> Path:
    """org/sd1 served again as `name`, to edit: its folder on the hub."""
    folder = repos.hub.root / name
    shutil.copytree(repos.hub.root / "org/sd1", folder, dirs_exist_ok=True)
    return folder


def files_tier(model_repos, weights, tmp_path, dtype=torch.float32, **settings) -> ModelFiles:
    """The disk tier in-process, fetching from model_repos' servers (any address allowed unless
    `private_networks` says otherwise)."""
    base = Settings.from_env()
    given = {
        "model_cache_dir": tmp_path / "models",
        "hf_endpoint": model_repos.hub.url,
        "civitai_endpoint": model_repos.files.url,
        "private_networks": None,
    } | settings
    return ModelFiles(dataclasses.replace(base, **given), weights, dtype)
