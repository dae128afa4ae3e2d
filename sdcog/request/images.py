"""Image inputs and outputs: decoding, sizing, and encoding."""

import io
import math
from pathlib import Path
from typing import IO

from PIL import Image, ImageOps, UnidentifiedImageError

from ..common.limits import MAX_ASPECT, MAX_INPUT_PIXELS, MAX_SIDE, MIN_SIDE
from .request import Request

SIZE_STEP = 64

# output_format -> (file extension, PIL format, encoder settings). Speed over the last bytes,
# measured at 1024x1024 on one core: PNG level 1 takes 100 ms instead of level 6's 355 ms for
# 11 % more bytes; WebP method 2 takes 52 ms instead of method 4's 113 ms for 4.5 % more bytes.
FORMATS = {
    "png": ("png", "PNG", {"compress_level": 1}),
    "jpg": ("jpg", "JPEG", {}),
    "webp": ("webp", "WEBP", {"method": 2}),
}


def read_image(path: Path | IO[bytes], input_name: str, mode: str = "RGB") -> Image.Image:
    """Decode an uploaded image, honouring its EXIF orientation; a clear error names the input.
    Its size is checked from its header before a pixel is decoded (check_pixels)."""
    unreadable = (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError)
    try:
        opened = Image.open(path)
    except unreadable as e:
        raise ValueError(f"{input_name}: could not be read as an image (PNG, JPEG, WebP, ...): "
                         f"{_reason(e)}") from None  # fmt: skip
    with opened:
        check_pixels(opened.size, input_name)
        try:
            image = ImageOps.exif_transpose(opened)
            image.load()
            return image.convert(mode)
        except unreadable as e:
            raise ValueError(f"{input_name}: could not be decoded: {_reason(e)}") from None


def check_pixels(size: tuple[int, int], input_name: str) -> None:
    """Refuse an image input whose decoded pixels would cost far more than its file: more than
    MAX_INPUT_PIXELS, or sides further apart than MAX_ASPECT to 1."""
    width, height = size
    if width * height > MAX_INPUT_PIXELS:
        raise ValueError(
            f"{input_name}: {width}x{height} is {width * height} pixels; at most "
            f"{MAX_INPUT_PIXELS} are decoded (downscale it first)"
        )
    if max(width, height) > MAX_ASPECT * max(1, min(width, height)):
        raise ValueError(
            f"{input_name}: {width}x{height} is more than {MAX_ASPECT} times as long as it is "
            "wide; crop it first"
        )


def _reason(error: Exception) -> str:
    """PIL's message without the server's temporary path, which it quotes for a file it
    cannot identify."""
    return str(error).split(" '/", 1)[0].rstrip(":")


def snap(side: float) -> int:
    """The nearest allowed side length: a multiple of 64 from 128 to 2048."""
    return min(MAX_SIDE, max(MIN_SIDE, round(side / SIZE_STEP) * SIZE_STEP))


def output_size(
    width: int | None, height: int | None, native: int, image: Image.Image | None
) -> tuple[int, int]:
    """Requested sides win. Without an input image a missing side is the model's native size;
    with one, missing sides follow its aspect (both missing: at the native pixel count)."""
    if width and height:
        return width, height
    if image is None:
        return width or native, height or native
    aspect = image.width / image.height
    if width:
        return width, snap(width / aspect)
    if height:
        return snap(height * aspect), height
    scale = math.sqrt(native * native / (image.width * image.height))
    return snap(image.width * scale), snap(image.height * scale)


def encode_image(
    image: Image.Image, output_format: str, quality: int, metadata: dict | None = None
) -> bytes:
    """One output's file content; quality applies to the lossy formats only; `metadata`:
    more of PIL's save options (the generation data's chunk or EXIF)."""
    _, pil_format, options = FORMATS[output_format]
    if pil_format != "PNG":
        options = {**options, "quality": quality}
    options = {**options, **(metadata or {})}
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def extension(output_format: str) -> str:
    return FORMATS[output_format][0]


def read_inputs(request: Request) -> tuple[Image.Image | None, Image.Image | None]:
    """The request's image and mask (same size), each decoded or refused naming its input."""
    image = read_image(request.image, "image") if request.image else None
    mask = read_image(request.mask, "mask", mode="L") if request.mask else None
    if image is not None and mask is not None and mask.size != image.size:
        raise ValueError(
            f"mask: its size {mask.width}x{mask.height} differs from the image's "
            f"{image.width}x{image.height}; give a mask of the same size"
        )
    return image, mask
