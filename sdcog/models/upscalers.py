"""A trained upscaler ([upscaler] in the pins: an ESRGAN-family model, or any super-resolution
architecture spandrel reads from a state dict), run tile by tile so that memory stays bounded.

The model runs at its own scale (once, or again while short of the factor asked), then the result
is resized (Lanczos) to exactly the factor asked: A1111's and ComfyUI's recipe.

Memory: the device holds one tile at a time (TILE input pixels a side plus PAD each way, and the
model's activations at TILE x its scale); the host holds the input and the output as 8-bit RGB, 3
bytes a pixel: 4x of 2048x2048 is 8192x8192, 201 MB. Neither grows with more tiles.
"""

import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

ENTRY = "upscaler"
TILE = 512  # input pixels a side per tile
# Input pixels each tile reads beyond its own edges, cut from its output: what the model sees at
# a tile's edge is then what it sees inside the image (RealESRGAN's tile_pad is 10).
PAD = 16
# The most output pixels an upscale may make: 4x of the largest generated size, 2048x2048.
MAX_UPSCALED_PIXELS = 8192 * 8192


def _import_spandrel() -> types.ModuleType:
    """spandrel, whose package imports every architecture it knows; two of them (LaMa,
    RestoreFormer) import torchvision at import time, which does not load against the CPU torch
    wheel and is not installed here. Neither is ever loaded: while spandrel is imported, those
    names resolve to a stand-in that raises if called, and the stand-in is removed after."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        pass
    else:
        import spandrel

        return spandrel
    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional"]

    def missing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("torchvision is not installed: this spandrel architecture needs it")

    stand_in = {name: types.ModuleType(name) for name in names}
    functional = stand_in["torchvision.transforms.functional"]
    functional.rotate = functional.normalize = missing  # type: ignore[attr-defined]
    functional.InterpolationMode = None  # type: ignore[attr-defined]
    sys.modules.update(stand_in)
    try:
        import spandrel
    finally:
        for name in names:
            sys.modules.pop(name, None)
    return spandrel


class Upscaler:
    def __init__(self, model) -> None:
        """`model`: spandrel's descriptor (its scale, device and dtype), which pads a tile to
        what its architecture needs."""
        self.model, self.scale = model, model.scale

    @classmethod
    def load(cls, weights_dir: Path, device: torch.device, dtype: torch.dtype) -> "Upscaler | None":
        """The pinned upscaler (weights/upscaler/*.safetensors), or None for a build without one.
        spandrel detects the architecture from the state dict's keys and shapes; anything but
        a single-image super-resolution model is refused."""
        files = sorted((weights_dir / ENTRY).glob("*.safetensors"))
        if not files:
            return None
        spandrel = _import_spandrel()
        try:
            descriptor = spandrel.ModelLoader().load_from_state_dict(load_file(files[0]))
        except spandrel.UnsupportedModelError:
            raise ValueError(
                f"{files[0]}: pinned as [{ENTRY}], but spandrel knows no architecture with its keys"
            ) from None
        if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose != "SR":
            raise ValueError(
                f"{files[0]}: pinned as [{ENTRY}], but spandrel reads it as "
                f"{descriptor.architecture.name} ({descriptor.purpose}), not an upscaler"
            )
        if device.type != "cuda" or not descriptor.supports_half:
            dtype = torch.float32  # CPUs are slow at half precision; some models lack it
        descriptor.to(device, dtype).eval()
        print(f"upscaler: {descriptor.architecture.name} {descriptor.scale}x ({files[0].name})")
        return cls(descriptor)

    def __call__(self, image: Image.Image, factor: float) -> Image.Image:
        """`image` upscaled `factor` times: the model's passes, then Lanczos to the exact size."""
        size = (round(image.width * factor), round(image.height * factor))
        reached = 1
        while reached < factor:
            image = self._pass(image)
            reached *= self.scale
        return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)

    @torch.inference_mode()
    def _pass(self, image: Image.Image) -> Image.Image:
        """One pass of the model, TILE by TILE; each tile sees PAD more pixels each way."""
        pixels = np.asarray(image.convert("RGB"))
        height, width = pixels.shape[:2]
        s = self.scale
        out = np.empty((height * s, width * s, 3), np.uint8)
        for top in range(0, height, TILE):
            for left in range(0, width, TILE):
                bottom, right = min(top + TILE, height), min(left + TILE, width)
                y0, x0 = max(top - PAD, 0), max(left - PAD, 0)
                y1, x1 = min(bottom + PAD, height), min(right + PAD, width)
                tile = torch.from_numpy(pixels[y0:y1, x0:x1].copy()).to(self.model.device)
                tile = tile.permute(2, 0, 1)[None].to(self.model.dtype) / 255
                result = self.model(tile).clamp(0, 1)[0].permute(1, 2, 0)
                result = (result.float() * 255).round().to(torch.uint8).cpu().numpy()
                inner = result[(top - y0) * s :, (left - x0) * s :]  # less what the pad added
                out[top * s : bottom * s, left * s : right * s] = inner[
                    : (bottom - top) * s, : (right - left) * s
                ]
        return Image.fromarray(out)


def check_size(size: tuple[int, int], factor: float, name: str = "upscale") -> None:
    """An upscale whose output would pass MAX_UPSCALED_PIXELS is refused, naming the input."""
    width, height = round(size[0] * factor), round(size[1] * factor)
    if width * height > MAX_UPSCALED_PIXELS:
        raise ValueError(
            f"{name}: {size[0]}x{size[1]} upscaled {factor:g}x is {width}x{height}, more than "
            f"the {MAX_UPSCALED_PIXELS:,} pixels an output may have (8192x8192); ask for less"
        )
