"""Tiny, randomly initialised Stable Diffusion weights in the real on-disk layout.

The models keep what the serving code depends on (VAE scale factor 8, 4 latent channels, a CLIP
tokenizer with 77-token context, a safety checker with concept embeddings) and shrink everything
else, so every schema size runs on a CPU in seconds. The images they make are noise.
"""

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import (
    AutoencoderTiny,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from ..common.pins import FAMILY_PIN_FILES, describe
from .clip_tokenizer import TOKEN_IDS, write_tokenizer
from .tiny_parts import (
    HIDDEN,
    NATIVE_SIZE,
    SEED,
    TIME_EMBED,
    sd_scheduler,
    sdxl_scheduler,
    tiny_text_config,
    tiny_unet,
    tiny_vae,
)


def write_base(directory: Path, native_size: int = NATIVE_SIZE) -> None:
    """A diffusers-layout SD 1.x-style text-to-image model."""
    torch.manual_seed(SEED)
    write_tokenizer(directory / "tokenizer")
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(tiny_text_config()),
        tokenizer=CLIPTokenizer.from_pretrained(directory / "tokenizer"),
        unet=tiny_unet(native_size // 8),
        scheduler=sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    # The tokenizer files above are SD 1.5's own layout; the pipeline writes everything else.
    for name in ("unet", "vae", "text_encoder"):
        getattr(pipe, name).save_pretrained(directory / name, safe_serialization=True)
    pipe.scheduler.save_pretrained(directory / "scheduler")
    # model_index.json as SD 1.5 ships it: it names a safety checker that the loader must skip.
    pipe.register_to_config(
        safety_checker=("stable_diffusion", "StableDiffusionSafetyChecker"),
        feature_extractor=("transformers", "CLIPImageProcessor"),
        requires_safety_checker=True,
    )
    pipe.save_config(directory)


def write_safety(directory: Path, threshold: float = 1.0) -> None:
    """A safety checker and its feature extractor in the layout of the real pinned one.

    Cosine similarities never exceed 1, so the default threshold flags nothing; a negative
    threshold flags every image (the tests use that).
    """
    torch.manual_seed(SEED)
    config = CLIPConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            **TOKEN_IDS,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    checker.save_pretrained(directory / "safety_checker", safe_serialization=True)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(directory / "feature_extractor")


def write_preview_decoder(directory: Path) -> None:
    """A TAESD-shaped tiny autoencoder (madebyollin/taesd's layout and block structure, 8
    channels wide instead of 64) as [taesd] pins it."""
    torch.manual_seed(SEED)
    save_taesd(
        AutoencoderTiny(
            encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8)
        ),
        directory / "taesd",
    )


def save_taesd(model: AutoencoderTiny, folder: Path) -> None:
    """As madebyollin/taesd's config.json has it: diffusers also writes `block_out_channels`,
    which it then warns about at every load."""
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="20GB")
    config = json.loads((folder / "config.json").read_text())
    config.pop("block_out_channels", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_tiny_weights(
    directory: Path,
    family: str = "sd",
    safety_threshold: float = 1.0,
    controls: bool = True,
    say: Callable[[str], None] = lambda part: None,
) -> None:
    """The family's model and safety checker; with `controls`, its ControlNets, annotators and
    IP-Adapters too (every entry of the family's pin file). `say` hears each part as it starts."""
    from .tiny_controls import write_annotators, write_controlnets
    from .tiny_finishing import write_upscaler
    from .tiny_ip import write_ip_adapters
    from .tiny_models import write_single_file_configs

    say("the base model")
    if family == "sdxl":
        write_sdxl(directory)
    else:
        write_base(directory / "base")
    describe(directory, FAMILY_PIN_FILES[family])  # the names its base model answers to
    say("the safety checker and preview decoder")
    write_safety(directory / "safety", threshold=safety_threshold)
    write_preview_decoder(directory)
    write_upscaler(directory)
    write_single_file_configs(directory)
    if controls:
        unet = UNet2DConditionModel.from_pretrained(directory / "base/unet")
        say("the ControlNets")
        write_controlnets(directory, family, unet)
        say("the annotators")
        write_annotators(directory)
        say("the IP-Adapters")
        write_ip_adapters(directory, family, unet)


def main(directory: Path, family: str) -> None:
    """script/tiny-weights: one line per part, with the time so far, and no libraries' bars."""
    import diffusers
    import huggingface_hub
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    start = time.monotonic()

    def say(part: str) -> None:
        print(f"tiny {family} weights: {part} ({time.monotonic() - start:.0f} s)",
              file=sys.stderr, flush=True)  # fmt: skip

    write_tiny_weights(directory, family, say=say)
    say("done")


# SDXL: two text encoders (the second with a projection), size/crop micro-conditioning, a
# refiner conditioned on the second encoder and an aesthetic score, and the fp16-fix VAE pinned
# on its own. Widths as in the real models, divided down: cross-attention = both encoders' widths.
SDXL_NATIVE_SIZE = 1024


def _sdxl_unet(cross_attention_dim: int, time_ids: int) -> UNet2DConditionModel:
    return tiny_unet(
        SDXL_NATIVE_SIZE // 8,
        cross_attention_dim=cross_attention_dim,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=time_ids * TIME_EMBED + HIDDEN,
        use_linear_projection=True,
    )


def write_sdxl(directory: Path) -> None:
    """SDXL base (without its VAE), refiner (UNet and scheduler) and the separately pinned VAE,
    each in the layout its pin downloads."""
    torch.manual_seed(SEED)
    write_tokenizer(directory / "base/tokenizer")
    write_tokenizer(directory / "base/tokenizer_2")
    tokenizer = CLIPTokenizer.from_pretrained(directory / "base/tokenizer")
    text_encoder_2 = CLIPTextModelWithProjection(tiny_text_config(projection_dim=HIDDEN))
    vae = tiny_vae(scaling_factor=0.13025, force_upcast=False)
    base = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(tiny_text_config()),
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=_sdxl_unet(cross_attention_dim=2 * HIDDEN, time_ids=6),
        scheduler=sdxl_scheduler(),
        force_zeros_for_empty_prompt=True,  # as the base 1.0 ships it (the refiner: False)
        add_watermarker=False,
    )
    for name in ("unet", "text_encoder", "text_encoder_2"):
        getattr(base, name).save_pretrained(directory / "base" / name, safe_serialization=True)
    base.scheduler.save_pretrained(directory / "base/scheduler")
    base.save_config(directory / "base")
    vae.save_pretrained(directory / "vae", safe_serialization=True)

    refiner = StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=text_encoder_2,
        tokenizer=None,
        tokenizer_2=tokenizer,
        unet=_sdxl_unet(cross_attention_dim=HIDDEN, time_ids=5),
        scheduler=sdxl_scheduler(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    refiner.unet.save_pretrained(directory / "refiner/unet", safe_serialization=True)
    refiner.scheduler.save_pretrained(directory / "refiner/scheduler")
    refiner.save_config(directory / "refiner")
