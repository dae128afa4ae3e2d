"""Hires fix: the first pass runs at the requested size divided by hires_scale; its decoded
images are upscaled (Lanczos) to the requested size, and an image-to-image pass at
hires_strength adds the detail the small pass could not hold."""

from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..request.images import SIZE_STEP


def first_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """The first pass's size: the final one divided by scale, in multiples of 64."""
    return tuple(max(SIZE_STEP, round(side / scale / SIZE_STEP) * SIZE_STEP) for side in size)


@dataclass
class SecondPass:
    pipe: Any  # the image-to-image pipeline (with the request's ControlNets, at the final size)
    size: tuple[int, int]
    strength: float
    steps: int
    inputs: dict[str, Any]  # ControlNet arguments at the final size, if any

    def __call__(self, images: list[Image.Image], common: dict[str, Any]) -> list[Image.Image]:
        upscaled = [image.resize(self.size, Image.Resampling.LANCZOS) for image in images]
        return self.pipe(
            **{**common, "num_inference_steps": self.steps}, **self.inputs,
            image=upscaled, strength=self.strength,
        ).images  # fmt: skip
