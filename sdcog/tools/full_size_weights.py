"""Full-size, randomly initialised weights: the pinned models' real architectures and configs with
random values, in the layout script/download-weights writes. They cost what the real models cost
(file sizes, load time, memory, compute), so the benchmarks run on them; their images are noise.

The one difference from the real files is the tokenizer: tiny.py's byte-level one (one token per
character). Prompts are padded to 77 tokens either way, so the text encoders do the same work.
"""

import shutil
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    ControlNetModel,
    ControlNetUnionModel,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from ..adapters.controlnets import KIND_ENTRIES, UNION_ENTRY
from ..adapters.faces import ENTRY as FACE_ENTRY
from ..common.pins import FAMILY_PIN_FILES, describe
from .clip_tokenizer import TOKEN_IDS as TOKENS
from .clip_tokenizer import write_tokenizer
from .download_weights import TEST_WEIGHTS_DIR
from .tiny_finishing import write_upscaler
from .tiny_parts import SEED, sd_scheduler, sdxl_scheduler
from .tiny_weights import save_taesd

# The configs of the real files (each repository's config.json), less defaults.
SD15_UNET = {
    "sample_size": 64,
    "block_out_channels": (320, 640, 1280, 1280),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}
SDXL_UNET = {
    "sample_size": 128,
    "block_out_channels": (320, 640, 1280),
    "cross_attention_dim": 2048,
    "attention_head_dim": (5, 10, 20),
    "transformer_layers_per_block": (1, 2, 10),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "use_linear_projection": True,
}
REFINER_UNET = {
    "sample_size": 128,
    "block_out_channels": (384, 768, 1536, 1536),
    "cross_attention_dim": 1280,
    "attention_head_dim": (6, 12, 24, 24),
    "transformer_layers_per_block": 4,
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",),
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2560,
    "use_linear_projection": True,
}
VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
          "num_attention_heads": 12, "projection_dim": 768, "hidden_act": "quick_gelu"}  # fmt: skip
CLIP_BIG_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
              "num_attention_heads": 20, "projection_dim": 1280, "hidden_act": "gelu"}  # fmt: skip
SAFETY_VISION = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                 "num_attention_heads": 16, "image_size": 224, "patch_size": 14}  # fmt: skip


def _text(config: dict) -> CLIPTextConfig:
    return CLIPTextConfig(**config, **TOKENS, max_position_embeddings=77)


def _save(model: torch.nn.Module, directory: Path) -> None:
    # One file per model, as the real repositories ship them (SDXL's UNet: 10.3 GB).
    model.save_pretrained(directory, safe_serialization=True, max_shard_size="20GB")


def write_safety(directory: Path) -> None:
    """CompVis' checker (CLIP ViT-L/14) with random concept embeddings: it flags nothing (its
    thresholds are raised out of reach), and costs what the real one costs."""
    config = CLIPConfig(text_config=_text(CLIP_L).to_dict(), vision_config=SAFETY_VISION,
                        projection_dim=768)  # fmt: skip
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(1.0)
        checker.special_care_embeds_weights.fill_(1.0)
    _save(checker, directory / "safety_checker")
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
                       ).save_pretrained(directory / "feature_extractor")  # fmt: skip


def write_sd(directory: Path) -> UNet2DConditionModel:
    write_tokenizer(directory / "tokenizer")
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**VAE, sample_size=512),
        text_encoder=CLIPTextModel(_text(CLIP_L)),
        tokenizer=CLIPTokenizer.from_pretrained(directory / "tokenizer"),
        unet=UNet2DConditionModel(**SD15_UNET),
        scheduler=sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for name in ("unet", "vae", "text_encoder"):
        _save(getattr(pipe, name), directory / name)
    pipe.scheduler.save_pretrained(directory / "scheduler")
    pipe.save_config(directory)
    return pipe.unet


def write_sdxl(directory: Path, refiner: bool) -> UNet2DConditionModel:
    """Base, the fp16-fix VAE pinned on its own, and (with `refiner`) the refiner."""
    write_tokenizer(directory / "base/tokenizer")
    write_tokenizer(directory / "base/tokenizer_2")
    tokenizer = CLIPTokenizer.from_pretrained(directory / "base/tokenizer")
    text_encoder_2 = CLIPTextModelWithProjection(_text(CLIP_BIG_G))
    vae = AutoencoderKL(**VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=False)
    base = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(_text(CLIP_L)), text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=UNet2DConditionModel(**SDXL_UNET),
        scheduler=sdxl_scheduler(), force_zeros_for_empty_prompt=True, add_watermarker=False,
    )  # fmt: skip
    for name in ("unet", "text_encoder", "text_encoder_2"):
        _save(getattr(base, name), directory / "base" / name)
    base.scheduler.save_pretrained(directory / "base/scheduler")
    base.save_config(directory / "base")
    _save(vae, directory / "vae")
    if refiner:
        refine = StableDiffusionXLImg2ImgPipeline(
            vae=vae, text_encoder=None, text_encoder_2=text_encoder_2, tokenizer=None,
            tokenizer_2=tokenizer, unet=UNet2DConditionModel(**REFINER_UNET),
            scheduler=sdxl_scheduler(), requires_aesthetics_score=True,
            force_zeros_for_empty_prompt=False, add_watermarker=False,
        )  # fmt: skip
        _save(refine.unet, directory / "refiner/unet")
        refine.scheduler.save_pretrained(directory / "refiner/scheduler")
        refine.save_config(directory / "refiner")
    return base.unet


def write_full_weights(directory: Path, family: str = "sd", refiner: bool = True) -> None:
    """The family's model, safety checker, upscaler and one ControlNet (SD: canny in
    lllyasviel's fp16 layout; SDXL: the union model), full size and random."""
    torch.manual_seed(SEED)
    if family == "sdxl":
        unet = write_sdxl(directory, refiner)
        union = ControlNetUnionModel.from_unet(unet, load_weights_from_unet=False)
        _save(union, directory / UNION_ENTRY)
    else:
        unet = write_sd(directory / "base")
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
        controlnet.half().save_pretrained(
            directory / KIND_ENTRIES["canny"], variant="fp16", safe_serialization=True
        )
    write_safety(directory / "safety")
    # TAESD and TAESDXL share one architecture: AutoencoderTiny's defaults are theirs.
    save_taesd(AutoencoderTiny(), directory / "taesd")
    write_upscaler(directory, features=64, blocks=23)  # Real-ESRGAN x4plus's size
    # The face detector is the real one where the tests' copy is here (600 KB: no stand-in).
    if (TEST_WEIGHTS_DIR / FACE_ENTRY).exists():
        shutil.copytree(TEST_WEIGHTS_DIR / FACE_ENTRY, directory / FACE_ENTRY, dirs_exist_ok=True)
    describe(directory, FAMILY_PIN_FILES[family])
