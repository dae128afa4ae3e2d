"""SDXL's invisible watermark (the invisible-watermark library, as diffusers' SDXL pipelines use
it), applied to finished images. Pure: nothing shared is changed, so nothing can leak."""

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion_xl.watermark import StableDiffusionXLWatermarker
from PIL import Image


def apply_watermark(images: list[Image.Image]) -> list[Image.Image]:
    """Embed the watermark; diffusers leaves images narrower than 256 px unmarked."""
    pixels = np.stack([np.asarray(image, dtype=np.float32) for image in images]) / 127.5 - 1
    marked = StableDiffusionXLWatermarker().apply_watermark(
        torch.from_numpy(pixels).permute(0, 3, 1, 2)
    )
    marked = ((marked.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255)
    return [Image.fromarray(array.astype(np.uint8)) for array in marked]
