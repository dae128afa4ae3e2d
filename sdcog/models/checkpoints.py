"""Single-file checkpoints (the original/A1111/civitai layout) converted once to diffusers' layout,
offline: with the configs this package ships for each family (model_configs/<family>/ beside this
file: the real models' model_index.json, component configs and tokenizer settings), never a hub
lookup.

A build may ship its own configs for a family in <weights>/single-file-configs/<family>/ (the
tiny test weights do). Tokenizer vocabularies are CLIP's in every family and are not shipped:
what a family's folder lacks of its tokenizers is taken from the build's own base model.
"""

import json
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors import safe_open

from ..common.families import Family

SHIPPED = Path(__file__).parent / "model_configs"


def configs(family: Family, weights_dir: Path) -> Path:
    """The config folder single files of `family` convert with: the build's own, or shipped."""
    own = weights_dir / "single-file-configs" / family.name
    return own if own.exists() else SHIPPED / family.name


def convert(
    checkpoint: Path, family: Family, weights_dir: Path, target: Path, dtype: torch.dtype
) -> None:
    """The checkpoint as a diffusers pipeline folder at `target`, in `dtype`."""
    with tempfile.TemporaryDirectory() as work:
        config = Path(work) / "config"
        shutil.copytree(configs(family, weights_dir), config)
        for name in ("tokenizer", "tokenizer_2"):
            if (config / name).exists():
                _complete(config / name, weights_dir / "base/tokenizer")
        pipe = family.traits.text_to_image.from_single_file(
            str(checkpoint),
            config=str(config),
            local_files_only=True,
            torch_dtype=dtype,
            **family.traits.single_file_options,
        )
        pipe.save_pretrained(target, safe_serialization=True)
    if v_prediction(checkpoint):
        mark_v_prediction(target)


# What a v-prediction fine-tune with zero-terminal-SNR noise (the NoobAI/Illustrious v-pred
# family) must be sampled with: ComfyUI and Forge read the checkpoint's `v_pred` key the same way.
V_PREDICTION = {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
                "timestep_spacing": "trailing"}  # fmt: skip


def v_prediction(checkpoint: Path) -> bool:
    """Whether a single-file checkpoint says it predicts v (its `v_pred` key)."""
    with safe_open(str(checkpoint), framework="pt") as f:
        return "v_pred" in f.keys()


def mark_v_prediction(pipeline_dir: Path) -> None:
    """A converted pipeline's scheduler config set to v-prediction with zero-terminal-SNR betas
    (diffusers' conversion does not read the key)."""
    path = pipeline_dir / "scheduler/scheduler_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | V_PREDICTION, indent=2) + "\n")
    print(f"{pipeline_dir.name}: a v-prediction checkpoint (its v_pred key): "
          "v_prediction, zero-terminal-SNR betas, trailing timesteps")  # fmt: skip


def convert_vae(checkpoint: Path, model_vae: Path, target: Path, dtype: torch.dtype) -> None:
    """A single-file VAE (original layout) as a diffusers AutoencoderKL folder, with the config
    of the model it is for (`model_vae`: its vae/ folder)."""
    vae = AutoencoderKL.from_single_file(
        str(checkpoint), config=str(model_vae), local_files_only=True, torch_dtype=dtype
    )
    vae.save_pretrained(target, safe_serialization=True)


def _complete(tokenizer: Path, source: Path) -> None:
    """The vocabulary the shipped tokenizer folder leaves out, from the build's own."""
    for name in ("vocab.json", "merges.txt"):
        if not (tokenizer / name).exists() and (source / name).exists():
            shutil.copy(source / name, tokenizer / name)
