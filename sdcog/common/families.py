"""Model families, the one place the runtime asks what a family is and has: SD 1.x, SD 2.x
(epsilon or v-prediction) or SDXL base, each with its traits (its pipelines, text encoders,
latent space, watermark, refiner, the build's adapters and ControlNets it takes). Which family a
model is comes from its files: a diffusers folder says it in its configs; a single-file
checkpoint in the keys of its tensors (the original layout names each text encoder by where it
sits)."""

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffusers import (
    DiffusionPipeline,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetInpaintPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLControlNetUnionImg2ImgPipeline,
    StableDiffusionXLControlNetUnionInpaintPipeline,
    StableDiffusionXLControlNetUnionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.configuration_utils import FrozenDict
from safetensors import safe_open

from .limits import MAX_SIDE, MIN_SIDE

# The UNet's first convolution: 4 input channels for text-to-image models, 9 for inpainting ones.
UNET_INPUT = "model.diffusion_model.input_blocks.0.0.weight"


@dataclass(frozen=True)
class Traits:
    """What every model of a family is and has."""

    label: str
    pipelines: str  # diffusers' pipeline kind, and a build's: "sd" (1.x and 2.x) or "sdxl"
    latents: str  # the latent space (what a preview decoder decodes): "sd" or "sdxl"
    text_encoders: int  # SDXL: two, the second with a pooled embedding
    embedding_keys: dict[str, str]  # an embedding file's keys -> its text encoder ("", "_2")
    sdxl_inputs: bool  # refine, high_noise_frac, refine_steps, apply_watermark, ...
    watermark: bool  # SDXL's invisible watermark (applied here, not by its pipelines)
    refiner: bool  # the SDXL refiner can follow it
    union_controlnet: bool  # xinsir's union ControlNet serves it
    text_to_image: type[DiffusionPipeline] = DiffusionPipeline  # its single files convert to it
    # What its pipelines are loaded with: the checker runs separately (so that flagged images
    # can be left out alone); the watermark is applied after the refiner, when asked for. What
    # its single files convert with (the build's checker serves them).
    load_options: dict[str, Any] = field(default_factory=dict)
    single_file_options: dict[str, Any] = field(default_factory=dict)
    # mode -> the ControlNet pipeline over its components, per kind (union: True)
    control_pipelines: dict[bool, dict[str, type[DiffusionPipeline]]] = field(default_factory=dict)
    # ip_adapter input -> the file in h94/IP-Adapter (SDXL: the adapters for the ViT-H encoder)
    ip_adapters: dict[str, str] = field(default_factory=dict)


SD_CONTROL = {
    "txt2img": StableDiffusionControlNetPipeline,
    "img2img": StableDiffusionControlNetImg2ImgPipeline,
    "inpaint": StableDiffusionControlNetInpaintPipeline,
}
SD_IP_ADAPTERS = {
    "standard": "models/ip-adapter_sd15.safetensors",
    "plus": "models/ip-adapter-plus_sd15.safetensors",
    "plus_face": "models/ip-adapter-plus-face_sd15.safetensors",
}
SD_OPTIONS = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def _sd(label: str) -> Traits:
    return Traits(
        label, "sd", "sd", 1, {"": ""}, sdxl_inputs=False, watermark=False, refiner=False,
        union_controlnet=False, text_to_image=StableDiffusionPipeline, load_options=SD_OPTIONS,
        single_file_options={"safety_checker": None}, control_pipelines={False: SD_CONTROL},
        ip_adapters=SD_IP_ADAPTERS,
    )  # fmt: skip


TRAITS = {
    "sd1": _sd("SD 1.x"),
    "sd2": _sd("SD 2.x"),
    "sdxl": Traits(
        "SDXL",
        "sdxl",
        "sdxl",
        2,
        {"clip_l": "", "clip_g": "_2"},
        sdxl_inputs=True,
        watermark=True,
        refiner=True,
        union_controlnet=True,
        text_to_image=StableDiffusionXLPipeline,
        load_options={"add_watermarker": False},
        control_pipelines={
            False: {
                "txt2img": StableDiffusionXLControlNetPipeline,
                "img2img": StableDiffusionXLControlNetImg2ImgPipeline,
                "inpaint": StableDiffusionXLControlNetInpaintPipeline,
            },
            True: {
                "txt2img": StableDiffusionXLControlNetUnionPipeline,
                "img2img": StableDiffusionXLControlNetUnionImg2ImgPipeline,
                "inpaint": StableDiffusionXLControlNetUnionInpaintPipeline,
            },
        },
        ip_adapters={
            "standard": "sdxl_models/ip-adapter_sdxl_vit-h.safetensors",
            "plus": "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",
            "plus_face": "sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors",
        },
    ),  # fmt: skip
}


# The kinds of pipeline (and of build: a pin file, tiny weights) and their traits: SD 1.x and
# 2.x share diffusers' pipelines.
PIPELINE_KINDS = {"sd": TRAITS["sd1"], "sdxl": TRAITS["sdxl"]}


@dataclass(frozen=True)
class Family:
    name: str  # sd1, sd2 or sdxl
    prediction: str = "epsilon"  # or v_prediction

    @property
    def traits(self) -> Traits:
        return TRAITS[self.name]

    @property
    def pipeline(self) -> str:
        """The pipelines' family: "sd" (1.x and 2.x share them) or "sdxl"."""
        return self.traits.pipelines

    def __str__(self) -> str:
        v = ", v-prediction" if self.prediction == "v_prediction" else ""
        return self.traits.label + v


def of_folder(folder: Path, input_name: str, reference: str) -> Family:
    """A diffusers pipeline folder's family; anything else is refused naming the input."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
        pipeline = index["_class_name"]
        text = json.loads((folder / "text_encoder/config.json").read_text())
        scheduler = json.loads((folder / "scheduler/scheduler_config.json").read_text())
        json.loads((folder / "unet/config.json").read_text())  # there, and JSON
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(
            f"{input_name}: {reference} is not a Stable Diffusion pipeline in diffusers' layout "
            f"(model_index.json, unet/, text_encoder/, scheduler/): {e}"
        ) from None
    if pipeline not in ("StableDiffusionPipeline", "StableDiffusionXLPipeline"):
        raise ValueError(
            f"{input_name}: {reference} is a {pipeline[:100]}; a base model is a text-to-image "
            "StableDiffusionPipeline (SD 1.x/2.x) or StableDiffusionXLPipeline (SDXL base)"
        )
    prediction = scheduler.get("prediction_type", "epsilon")
    if pipeline == "StableDiffusionXLPipeline":
        return Family("sdxl", prediction)
    # SD 2.x's OpenCLIP text encoder uses GELU, SD 1.x's OpenAI CLIP quick GELU.
    return Family("sd2" if text.get("hidden_act") == "gelu" else "sd1", prediction)


def of_checkpoint(path: Path, input_name: str, reference: str) -> Family:
    """A single-file checkpoint's family, from its keys. SD 2.x files do not say whether they
    predict noise or velocity: they are taken as v-prediction, as SD 2.0-v, 2.1 and their 768 px
    fine-tunes are (an SD 2.x-base fine-tune, epsilon, is served from its diffusers repository,
    whose scheduler config says so)."""
    with safe_open(path, framework="pt") as f:
        keys = set(f.keys())
        channels = f.get_slice(UNET_INPUT).get_shape()[1] if UNET_INPUT in keys else None
    if channels is None:
        raise ValueError(
            f"{input_name}: {reference} holds no Stable Diffusion UNet "
            "(model.diffusion_model.*); give a full SD 1.x, 2.x or SDXL checkpoint"
        )
    if channels == 9:
        raise ValueError(
            f"{input_name}: {reference} is an inpainting checkpoint (9 input channels); "
            "single files convert with text-to-image configs: give its diffusers repository"
        )
    if channels != 4:
        raise ValueError(
            f"{input_name}: {reference}'s UNet takes {channels} input channels; a Stable "
            "Diffusion checkpoint's takes 4 (9 for inpainting): not a checkpoint this package "
            "converts"
        )
    if any(k.startswith("conditioner.embedders.1.model.") for k in keys):
        return Family("sdxl")
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        raise ValueError(
            f"{input_name}: {reference} is an SDXL refiner; a base model is SD 1.x, 2.x or SDXL "
            "base (the refiner is the build's own: refine)"
        )
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return Family("sd2", "v_prediction")
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return Family("sd1")
    raise ValueError(
        f"{input_name}: {reference} has no text encoder this package knows (SD 1.x, 2.x or SDXL)"
    )


@dataclass(frozen=True)
class Facts:
    """What the request's other inputs must fit: the model's family, its UNet's config (with
    diffusers' defaults filled in), its VAE's latent scale and its native size (which must be a
    size a request may ask for: a config cannot push a request past the limits)."""

    family: Family
    unet: FrozenDict
    vae_scaling: float
    native_size: int  # the side it draws at when the request gives none
    name: str  # what refusals call it: "the build's model", or the reference

    @property
    def inpainting(self) -> bool:
        """An inpainting fine-tune's UNet (9 input channels: latents, mask, masked image)."""
        return self.unet["in_channels"] == 9

    @classmethod
    def of(cls, folder: Path, input_name: str, reference: str, vae: Path | None = None) -> "Facts":
        """From a pipeline folder's configs (no weights needed); `vae`: a folder replacing its
        VAE."""
        family = of_folder(folder, input_name, reference)
        unet = json.loads((folder / "unet/config.json").read_text())
        defaults = {
            name: p.default
            for name, p in inspect.signature(UNet2DConditionModel.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        vae_config = json.loads(((vae or folder / "vae") / "config.json").read_text())
        unet = FrozenDict({**defaults, **unet})
        if unet["in_channels"] not in (4, 9):
            raise ValueError(
                f"{input_name}: {reference}'s UNet takes {unet['in_channels']!r} input channels; "
                "a Stable Diffusion UNet takes 4 (9 for inpainting)"
            )
        native = _native_size(unet, vae_config, input_name, reference)
        return cls(family, unet, vae_config.get("scaling_factor", 0.18215), native, reference)


def _native_size(unet: FrozenDict, vae: dict, input_name: str, reference: str) -> int:
    """The UNet's sample size in pixels (latents are the VAE's factor smaller), as diffusers'
    pipelines derive their default size; refused outside what width and height allow."""
    sample, factor = unet["sample_size"], 2 ** (len(vae.get("block_out_channels", [64])) - 1)
    native = sample * factor if isinstance(sample, int) else None
    if native is None or not MIN_SIDE <= native <= MAX_SIDE or native % 8:
        raise ValueError(
            f"{input_name}: {reference}'s native size ({sample!r} latents x {factor}) is not a "
            f"size width and height allow ({MIN_SIDE} to {MAX_SIDE}, a multiple of 8); its UNet "
            "config is not one this package serves"
        )
    return native
