"""Loading the pinned model once and sharing its components between modes and the refiner.

The family follows from the pinned weights' configs (families.py), and what the pipelines are
loaded with from its traits. weights/vae/ (SDXL's fp16-fix VAE), if present, replaces the base
model's VAE; weights/refiner/ (a family that takes one: SDXL) adds a refiner UNet that shares
the base's VAE and second text encoder.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    ControlNetUnionModel,
    DiffusionPipeline,
    ModelMixin,
    StableDiffusionXLImg2ImgPipeline,
)
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.utils import logging as diffusers_logging

from ..common import families
from ..common.families import Family
from ..request.schedulers import make_scheduler
from ..speed import fast_path as fast


def device_and_dtype() -> tuple[str, torch.dtype]:
    """fp16 on CUDA, fp32 on CPU (CPU kernels for fp16 are slow or missing)."""
    if torch.cuda.is_available():
        return "cuda", torch.float16
    return "cpu", torch.float32


# A model's own weighted components (the safety checker and image encoder are the build's).
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def _modes(txt2img: DiffusionPipeline) -> dict[str, DiffusionPipeline]:
    """The three modes' pipelines over one set of components (from_pipe copies no weights)."""
    return {
        "txt2img": txt2img,
        "img2img": AutoPipelineForImage2Image.from_pipe(txt2img),
        "inpaint": AutoPipelineForInpainting.from_pipe(txt2img),
    }


@dataclass
class Pipelines:
    family: Family
    base: dict[str, DiffusionPipeline]
    refiner: dict[str, DiffusionPipeline] | None
    scheduler_configs: dict[str, dict[str, Any]] = field(repr=False)
    native_size: int

    @classmethod
    def load(cls, weights_dir: Path, fast_path: tuple[str, ...] = ()) -> "Pipelines":
        """The build's model at weights_dir (its vae/ and refiner/ pins too), with the fast
        path's optimisations (fast_path.py) applied."""
        base = weights_dir / "base"
        if not (base / "model_index.json").exists():
            raise FileNotFoundError(
                f"no model at {base}: run script/download-weights (real weights) "
                "or script/tiny-weights (tiny random ones), or set WEIGHTS_DIR"
            )
        family = families.of_folder(base, "base_model", "the build's model")
        vae = weights_dir / "vae" if (weights_dir / "vae/config.json").exists() else None
        pipelines = cls.from_folder(base, family, fast_path, vae=vae)
        if family.traits.refiner and (weights_dir / "refiner/model_index.json").exists():
            pipelines._add_refiner(weights_dir / "refiner", fast_path)
        return pipelines

    @classmethod
    def from_folder(
        cls,
        folder: Path,
        family: Family,
        fast_path: tuple[str, ...] = (),
        vae: Path | None = None,
        variant: str | None = None,
    ) -> "Pipelines":
        """A diffusers pipeline folder's three modes, without a refiner. `vae`: a folder whose
        VAE replaces the pipeline's own; `variant`: the weights' ("fp16"), if not the plain."""
        device, dtype = device_and_dtype()
        # Straight to the device: no CPU copy of the weights on the way.
        local = {"dtype": dtype, "local_files_only": True, "device_map": device}
        # The IP-Adapter's image encoder is the build's (ip_adapters.py), whatever the folder
        # names (a requested model's repository may list one it did not ship).
        extra: dict[str, Any] = {**family.traits.load_options, "image_encoder": None}
        if vae is not None:
            extra["vae"] = AutoencoderKL.from_pretrained(vae, **local)
        txt2img = AutoPipelineForText2Image.from_pretrained(
            folder, variant=variant, **extra, **local
        )
        _prepare(txt2img, fast_path)
        return cls(
            family=family,
            base=_modes(txt2img),
            refiner=None,
            scheduler_configs={"base": dict(txt2img.scheduler.config)},
            native_size=txt2img.unet.config.sample_size * txt2img.vae_scale_factor,
        )

    def _add_refiner(self, folder: Path, fast_path: tuple[str, ...]) -> None:
        """SDXL's refiner: its own UNet over the base's VAE and second text encoder."""
        txt2img = self.base["txt2img"]
        device, dtype = device_and_dtype()
        refine = StableDiffusionXLImg2ImgPipeline.from_pretrained(
            folder,
            vae=txt2img.vae,
            text_encoder_2=txt2img.text_encoder_2,
            tokenizer_2=txt2img.tokenizer_2,
            dtype=dtype,
            local_files_only=True,
            device_map=device,
            add_watermarker=False,
        )
        _prepare(refine, fast_path)
        self.refiner = {
            "txt2img": refine,
            "img2img": refine,
            "inpaint": AutoPipelineForInpainting.from_pipe(refine),
        }
        self.scheduler_configs["refiner"] = dict(refine.scheduler.config)

    def share_refiner(self, other: "Pipelines") -> None:
        """The other model's SDXL refiner (with its own VAE and text encoder) for this one."""
        self.refiner = other.refiner
        self.scheduler_configs["refiner"] = other.scheduler_configs["refiner"]

    def get(
        self,
        mode: str,
        scheduler: str,
        controlnet: ModelMixin | list[ModelMixin] | None = None,
        spacing: str = "default",
        schedule: str = "Automatic",
    ) -> DiffusionPipeline:
        """The mode's pipeline with a fresh scheduler built from the model's original config;
        with `controlnet`, a ControlNet pipeline over the same components for this request."""
        pipe = self.base[mode]
        if controlnet is not None:
            first = controlnet[0] if isinstance(controlnet, list) else controlnet
            union = isinstance(first, ControlNetUnionModel)
            # dtype: without it from_pipe casts the shared UNet to fp32. The watermark is ours
            # to apply (from_pipe does not carry add_watermarker=False over).
            traits = self.family.traits
            extra = {"add_watermarker": False} if traits.watermark else {}
            with _quiet():  # from_pipe's cast to the same dtype warns about every model
                pipe = traits.control_pipelines[union][mode].from_pipe(
                    pipe, controlnet=controlnet, dtype=pipe.unet.dtype, **extra
                )
        configs = self.scheduler_configs["base"]
        pipe.scheduler = make_scheduler(scheduler, configs, spacing, schedule)
        return pipe

    def refiner_scheduler(
        self, scheduler: str, spacing: str = "default", schedule: str = "Automatic"
    ) -> Any:
        """A fresh scheduler `scheduler` for the refiner, on no pipeline yet."""
        return make_scheduler(scheduler, self.scheduler_configs["refiner"], spacing, schedule)

    def get_refiner(
        self, mode: str, scheduler: str, spacing: str = "default", schedule: str = "Automatic"
    ) -> DiffusionPipeline:
        assert self.refiner is not None
        pipe = self.refiner[mode]
        configs = self.scheduler_configs["refiner"]
        pipe.scheduler = make_scheduler(scheduler, configs, spacing, schedule)
        return pipe

    def own_modules(self) -> list[torch.nn.Module]:
        """The model's own weighted components (not the refiner's, nor the shared encoders)."""
        pipe = self.base["txt2img"]
        return [m for name in COMPONENTS if (m := getattr(pipe, name, None)) is not None]

    @property
    def device(self) -> torch.device:
        return self.base["txt2img"].device


@contextmanager
def _quiet() -> Iterator[None]:
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def _prepare(pipe: DiffusionPipeline, fast_path: tuple[str, ...]) -> None:
    # Inference only. Loading a LoRA (peft) turns requires_grad off in the layers it touches, and
    # a compiled UNet's guards check it: off from the start, a LoRA request leaves them as found.
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False)
    # PyTorch's fused scaled-dot-product attention everywhere.
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    pipe.vae.set_attn_processor(AttnProcessor2_0())
    pipe.vae.enable_slicing()  # decode one image at a time: bounded memory for batches
    fast.apply(pipe, fast_path)
