"""Outpainting and inpainting at full resolution: the picture a prediction paints into.

Both run the inpainting pipeline over one region of a picture and paste its result back through
a feathered mask, so that every pixel the mask keeps is the input's, byte for byte:
- outpainting pads the image (its border pixels stretched outwards as a start), and the mask
  covers the new area plus a seam `outpaint_blur` pixels wide into the original;
- mask_margin crops the mask's bounding box plus the margin, which the pipeline then paints at
  the model's native pixel count, and pixels outside the crop are never touched.
"""

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageFilter

from ..request.request import Request

Box = tuple[int, int, int, int]  # left, top, right, bottom


@dataclass(frozen=True)
class Canvas:
    picture: Image.Image  # the output's size: original pixels where the mask is black
    mask: Image.Image  # "L", picture-sized: 255 is painted, 0 is kept, between is blended
    box: Box  # the region the pipeline paints

    def region(self) -> tuple[Image.Image, Image.Image]:
        """The pipeline's image and mask."""
        return self.picture.crop(self.box), self.mask.crop(self.box)

    def paste(self, painted: Image.Image) -> Image.Image:
        """The picture with `painted` (any size: resized to the box) blended in through the mask."""
        left, top, right, bottom = self.box
        painted = painted.convert("RGB").resize(
            (right - left, bottom - top), Image.Resampling.LANCZOS
        )
        region = Image.composite(painted, self.picture.crop(self.box), self.mask.crop(self.box))
        result = self.picture.copy()
        result.paste(region, (left, top))
        return result


def outpaint(image: Image.Image, mask: Image.Image | None, sides: Box, blur: int) -> Canvas:
    """`image` padded by sides (left, top, right, bottom) pixels; a given inpainting mask is kept
    and the new area added to it."""
    left, top, right, bottom = sides
    pixels = np.pad(np.asarray(image), ((top, bottom), (left, right), (0, 0)), mode="edge")
    picture = Image.fromarray(pixels)
    # 255 over the new area; over the original, a seam exactly `blur` pixels wide along each
    # padded side, fading linearly from the new area to 0 (kept).
    new = np.full((picture.height, picture.width), 255.0)
    ys, xs = np.mgrid[0 : image.height, 0 : image.width]
    inside = [xs, ys, image.width - 1 - xs, image.height - 1 - ys]  # distance to each side
    seam = np.zeros(xs.shape)
    for pad, distance in zip(sides, inside, strict=True):
        if pad and blur:
            seam = np.maximum(seam, np.clip(blur - distance, 0, None) / (blur + 1))
    new[top : top + image.height, left : left + image.width] = seam * 255
    new = Image.fromarray(np.rint(new).astype(np.uint8))
    if mask is not None:
        padded = Image.new("L", picture.size, 0)
        padded.paste(mask, (left, top))
        new = Image.fromarray(np.maximum(np.asarray(new), np.asarray(padded)))
    return Canvas(picture, new, (0, 0, *picture.size))


def masked_area(image: Image.Image, mask: Image.Image, margin: int) -> Canvas:
    """The mask's bounding box plus `margin` pixels, clamped to the image; the mask feathered
    outwards (grown by 2 sigma, then blurred by sigma = margin / 8, at most 8 px: it fades out
    well inside the margin, and a small mask keeps its full strength) so the crop pastes back
    without a hard edge."""
    bounds = mask.getbbox() or (0, 0, *image.size)  # an empty mask: the whole image
    box = (
        max(0, bounds[0] - margin),
        max(0, bounds[1] - margin),
        min(image.width, bounds[2] + margin),
        min(image.height, bounds[3] + margin),
    )
    sigma = min(8.0, margin / 8)
    grow = 2 * round(2 * sigma) + 1
    grown = cv2.dilate(np.asarray(mask), np.ones((grow, grow), np.uint8))
    feathered = Image.fromarray(grown).filter(ImageFilter.GaussianBlur(sigma))
    return Canvas(image, feathered, box)


def for_request(
    request: Request, image: Image.Image | None, mask: Image.Image | None
) -> Canvas | None:
    """The request's canvas: outpainting or mask_margin; None for neither."""
    if request.outpainting:
        return outpaint(image, mask, request.outpaint_sides, request.outpaint_blur)
    if request.mask_margin:
        return masked_area(image, mask, request.mask_margin)
    return None
