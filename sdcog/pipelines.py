"""Loading the pinned model once and sharing its components between the three modes."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    DiffusionPipeline,
)
from diffusers.models.attention_processor import AttnProcessor2_0

from .schedulers import make_scheduler

MODES = ("txt2img", "img2img", "inpaint")


def device_and_dtype() -> tuple[str, torch.dtype]:
    """fp16 on CUDA, fp32 on CPU (CPU kernels for fp16 are slow or missing)."""
    if torch.cuda.is_available():
        return "cuda", torch.float16
    return "cpu", torch.float32


@dataclass
class Pipelines:
    """txt2img, img2img and inpainting pipelines over one set of components (one UNet)."""

    by_mode: dict[str, DiffusionPipeline]
    scheduler_config: dict[str, Any] = field(repr=False)
    native_size: int

    @classmethod
    def load(cls, model_dir: Path) -> "Pipelines":
        if not (model_dir / "model_index.json").exists():
            raise FileNotFoundError(
                f"no model at {model_dir}: run script/download-weights (real weights) "
                "or script/tiny-weights (tiny random ones), or set WEIGHTS_DIR"
            )
        device, dtype = device_and_dtype()
        txt2img = AutoPipelineForText2Image.from_pretrained(
            model_dir,
            dtype=dtype,
            safety_checker=None,  # run separately, so that flagged images can be left out
            feature_extractor=None,
            requires_safety_checker=False,
            local_files_only=True,
        ).to(device)
        # PyTorch's fused scaled-dot-product attention everywhere.
        txt2img.unet.set_attn_processor(AttnProcessor2_0())
        txt2img.vae.set_attn_processor(AttnProcessor2_0())
        txt2img.vae.enable_slicing()  # decode one image at a time: bounded memory for batches
        return cls(
            by_mode={
                "txt2img": txt2img,
                "img2img": AutoPipelineForImage2Image.from_pipe(txt2img),
                "inpaint": AutoPipelineForInpainting.from_pipe(txt2img),
            },
            scheduler_config=dict(txt2img.scheduler.config),
            native_size=txt2img.unet.config.sample_size * txt2img.vae_scale_factor,
        )

    def get(self, mode: str, scheduler: str) -> DiffusionPipeline:
        """The mode's pipeline with a fresh scheduler built from the model's original config."""
        pipe = self.by_mode[mode]
        pipe.scheduler = make_scheduler(scheduler, self.scheduler_config)
        return pipe

    @property
    def device(self) -> torch.device:
        return self.by_mode["txt2img"].device
