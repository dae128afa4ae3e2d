"""Tiny models a request may name as its base_model: SD 1.x (the tiny build's architecture, other
weights), SD 2.x (wider text encoder with GELU, v-prediction, 768 px native) and SDXL (text
encoders of different widths, as the real ones are), each in the layout of its real
repository; and the configs their single-file checkpoints convert with
(<weights>/single-file-configs/<family>/, the tiny counterpart of sdcog/models/model_configs/).
"""

import json
import shutil
from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .clip_tokenizer import write_tokenizer
from .tiny_parts import (
    HIDDEN,
    TIME_EMBED,
    sd_scheduler,
    sdxl_scheduler,
    tiny_text_config,
    tiny_unet,
    tiny_vae,
)

SD2_HIDDEN = 48  # SD 2.x's text encoder is wider than SD 1.x's (1024 against 768)
SDXL_HIDDEN_2 = 48  # SDXL's second encoder is wider than its first (1280 against 768)
FAMILIES = ("sd1", "sd2", "sdxl")


def _sd2_scheduler() -> DDIMScheduler:
    # SD 2.1's shipped scheduler config: v-prediction.
    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
    )  # fmt: skip


def _sd(family: str) -> StableDiffusionPipeline:
    sd2 = family == "sd2"
    hidden = SD2_HIDDEN if sd2 else HIDDEN
    text = tiny_text_config(hidden_size=hidden, hidden_act="gelu") if sd2 else tiny_text_config()
    return StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(text),
        tokenizer=None,
        unet=tiny_unet(96 if sd2 else 64, cross_attention_dim=hidden),
        scheduler=_sd2_scheduler() if sd2 else sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _sdxl() -> StableDiffusionXLPipeline:
    width = HIDDEN + SDXL_HIDDEN_2
    unet = tiny_unet(
        128,
        cross_attention_dim=width,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=6 * TIME_EMBED + SDXL_HIDDEN_2,
        use_linear_projection=True,
    )
    return StableDiffusionXLPipeline(
        vae=tiny_vae(scaling_factor=0.13025, force_upcast=False),
        text_encoder=CLIPTextModel(tiny_text_config()),
        text_encoder_2=CLIPTextModelWithProjection(
            tiny_text_config(hidden_size=SDXL_HIDDEN_2, projection_dim=SDXL_HIDDEN_2)
        ),
        tokenizer=None,
        tokenizer_2=None,
        unet=unet,
        scheduler=sdxl_scheduler(),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def _pipeline(family: str) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    return _sdxl() if family == "sdxl" else _sd(family)


def write_tiny_model(directory: Path, family: str, seed: int = 1) -> None:
    """A tiny text-to-image model of `family` (sd1, sd2, sdxl) in diffusers' layout, with weights
    drawn from `seed` (the tiny build's are from 0)."""
    torch.manual_seed(seed)
    pipe = _pipeline(family)
    tokenizers = ["tokenizer"] + (["tokenizer_2"] if family == "sdxl" else [])
    for name in tokenizers:
        write_tokenizer(directory / name)
        pipe.register_modules(**{name: CLIPTokenizer.from_pretrained(directory / name)})
    if family == "sd2":  # SD 2.x pads with "!" (OpenCLIP), as SDXL's second tokenizer does
        _pad_with_bang(directory / "tokenizer")
    if family == "sdxl":
        _pad_with_bang(directory / "tokenizer_2")
    pipe.save_pretrained(directory, safe_serialization=True)


def write_single_file_configs(weights_dir: Path) -> None:
    """<weights>/single-file-configs/<family>/: what a tiny single-file checkpoint of each family
    converts with (configs and tokenizer settings, no weights, as sdcog/models/model_configs/)."""
    for family in FAMILIES:
        target = weights_dir / "single-file-configs" / family
        if target.exists():
            shutil.rmtree(target)
        write_tiny_model(target, family)
        for path in list(target.rglob("*.safetensors")) + list(target.rglob("vocab.json")):
            path.unlink()
        for path in target.rglob("merges.txt"):
            path.unlink()


def _pad_with_bang(tokenizer: Path) -> None:
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        config = json.loads((tokenizer / name).read_text())
        config["pad_token"] = "!"
        (tokenizer / name).write_text(json.dumps(config, indent=2))
