"""The request's images as the pipelines take them: read and placed on the canvas, the size the
pipeline runs at, and the arguments that differ between txt2img, img2img and inpainting."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..adapters.controlnets import Steering
from ..request import images
from ..request.request import Request
from . import canvas
from .canvas import Canvas
from .previews import PreviewStream


@dataclass
class Inputs:
    """What stage 3 makes of the request's inputs, for the stages after it."""

    picture: Canvas | None  # outpainting or mask_margin: the picture the result is pasted into
    image: Image.Image | None
    mask: Image.Image | None
    ip_image: Image.Image | None
    size: tuple[int, int]
    first: tuple[int, int]  # the first pass's size: the hires fix's smaller one, else `size`
    seeds: list[int]  # one an output
    steering: Steering | None  # the ControlNets of the (first) pass
    second_steering: Steering | None  # the hires fix's, at the final size
    folder: Path  # where its files go
    token: str
    previews: PreviewStream | None


def read(request: Request) -> tuple[Any, ...]:
    """The canvas (or None), the image and mask the pipeline paints (the canvas's region of
    them), the control images over the same region, and the IP-Adapter image (or None)."""
    image, mask = images.read_inputs(request)
    picture = canvas.for_request(request, image, mask)
    if picture:  # the pipeline paints one region of the picture, pasted back at the end
        image, mask = picture.region()
    control_images = [images.read_image(s.image, f"{s.name}_image") for s in request.controlnets]
    if picture:  # control maps line up with the picture, so they take the same region
        control_images = [
            c.resize(picture.picture.size, Image.Resampling.LANCZOS).crop(picture.box)
            for c in control_images
        ]
    ip_image = None
    if request.ip_adapter_image:
        ip_image = images.read_image(request.ip_adapter_image, "ip_adapter_image")
    return picture, image, mask, control_images, ip_image


def size(
    request: Request,
    native: int,
    image: Image.Image | None,
    mask: Image.Image | None,
    control_images: list[Image.Image],
) -> tuple[int, int]:
    """The size the pipeline runs at (hires fix: its second pass). Outpainting: the padded
    picture's; mask_margin: the crop's aspect at the native pixel count; a sizing_strategy
    naming an image: its aspect at the native pixel count; else the request's, or from the
    image (or first control image) and the native size."""
    guide = image or next(iter(control_images), None)
    if request.outpainting:
        return images.snap(guide.width), images.snap(guide.height)
    if request.mask_margin:
        return images.output_size(None, None, native, guide)
    if request.sizing_strategy != "width_height":
        slots = [f"{slot.name}_image" for slot in request.controlnets]
        named = {"input_image": image, "mask_image": mask}
        named |= dict(zip(slots, control_images, strict=True))
        return images.output_size(None, None, native, named[request.sizing_strategy])
    return images.output_size(request.width, request.height, native, guide)


def mode_inputs(
    request: Request,
    image: Image.Image | None,
    mask: Image.Image | None,
    size: tuple[int, int],
) -> dict[str, Any]:
    """The arguments that differ between txt2img, img2img and inpainting."""
    width, height = size
    if image is None:
        return {"width": width, "height": height}
    inputs: dict[str, Any] = {
        "image": image.resize(size, Image.Resampling.LANCZOS),
        "strength": request.prompt_strength,
    }
    if mask is not None:
        inputs.update(
            mask_image=mask.resize(size, Image.Resampling.LANCZOS), width=width, height=height
        )
    return inputs
