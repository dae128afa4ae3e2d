"""Outpainting and full-resolution inpainting canvases: what is painted, what is kept."""

import numpy as np
import pytest
from PIL import Image

from sdcog.denoise.canvas import masked_area, outpaint


def photo(width: int = 96, height: int = 64) -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def test_outpaint_pads_and_masks_the_new_area_and_seam():
    image = photo()
    canvas = outpaint(image, None, (64, 0, 32, 0), blur=8)
    assert canvas.picture.size == (96 + 96, 64) and canvas.box == (0, 0, 192, 64)
    mask = np.asarray(canvas.mask)
    assert (mask[:, :64] == 255).all() and (mask[:, 64 + 96 :] == 255).all()  # the new area
    assert (mask[:, 64 + 8 : 64 + 96 - 8] == 0).all()  # away from the seams: kept
    # The new area starts as the stretched border.
    assert np.array_equal(np.asarray(canvas.picture)[:, 0], np.asarray(image)[:, 0])


@pytest.mark.parametrize("blur", [1, 8, 16, 64])
def test_the_seam_is_as_wide_as_outpaint_blur_says(blur):
    """Exactly `blur` columns of the original are blended, fading in from the kept side."""
    canvas = outpaint(photo(128, 64), None, (0, 0, 64, 0), blur=blur)
    row = np.asarray(canvas.mask)[10].astype(int)
    seam = row[128 - blur : 128]
    assert (row[: 128 - blur] == 0).all() and (row[128:] == 255).all()
    assert (seam > 0).all() and (seam < 255).all() and (np.diff(seam) > 0).all()


def test_paste_keeps_every_pixel_the_mask_keeps():
    image = photo()
    canvas = outpaint(image, None, (0, 64, 0, 0), blur=0)
    painted = Image.new("RGB", (256, 256), "red")  # any size: resized to the box
    result = np.asarray(canvas.paste(painted))
    assert result.shape == (128, 96, 3)
    assert np.array_equal(result[64:], np.asarray(image))
    assert (result[:64] == [255, 0, 0]).all()


def test_a_given_mask_is_added_to_the_outpainted_area():
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (40, 20, 50, 30))
    canvas = outpaint(photo(), mask, (0, 0, 64, 0), blur=0)
    assert np.asarray(canvas.mask)[25, 45] == 255 and np.asarray(canvas.mask)[25, 10] == 0


def test_masked_area_crops_the_mask_box_plus_margin_and_touches_nothing_outside():
    image = photo(200, 160)
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (100, 80, 120, 90))
    canvas = masked_area(image, mask, margin=16)
    assert canvas.box == (84, 64, 136, 106)
    crop, crop_mask = canvas.region()
    assert crop.size == crop_mask.size == (52, 42)
    result = np.asarray(canvas.paste(Image.new("RGB", (512, 512), "blue")))
    outside = np.ones(result.shape[:2], bool)
    outside[64:106, 84:136] = False
    assert np.array_equal(result[outside], np.asarray(image)[outside])
    assert (result[85, 110] == [0, 0, 255]).all()
    assert masked_area(image, mask, margin=200).box == (0, 0, 200, 160)  # clamped
