"""Hires fix: the first pass runs at the requested size divided by hires_scale; its decoded
images are enlarged to the requested size (hires_upscaler: a Lanczos resize, or the build's
trained upscaler), and an image-to-image pass at hires_strength adds the detail the small pass
could not hold."""

from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..models.upscalers import Upscaler
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
    upscaler: Upscaler | None = None  # None: Lanczos

    def __call__(self, images: list[Image.Image], common: dict[str, Any]) -> list[Image.Image]:
        upscaled = [self._enlarge(image) for image in images]
        return self.pipe(
            **{**common, "num_inference_steps": self.steps}, **self.inputs,
            image=upscaled, strength=self.strength,
        ).images  # fmt: skip

    def _enlarge(self, image: Image.Image) -> Image.Image:
        if self.upscaler is None:
            return image.resize(self.size, Image.Resampling.LANCZOS)
        # The model's scale (2x is enough for hires_scale up to 2), then to the exact size.
        factor = max(self.size[0] / image.width, self.size[1] / image.height)
        return self.upscaler(image, factor).resize(self.size, Image.Resampling.LANCZOS)
