"""Outpainting and full-resolution inpainting canvases: what is painted, what is kept."""

import numpy as np
from PIL import Image

from sdcog.canvas import masked_area, outpaint


def photo(width: int = 96, height: int = 64) -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def test_outpaint_pads_and_masks_the_new_area_and_seam():
    image = photo()
    canvas = outpaint(image, None, (64, 0, 32, 0), blur=8)
    assert canvas.picture.size == (96 + 96, 64) and canvas.box == (0, 0, 192, 64)
    mask = np.asarray(canvas.mask)
    assert (mask[:, :60] == 255).all() and (mask[:, 64 + 96 + 4 :] == 255).all()
    assert (mask[:, 64 + 16 : 64 + 96 - 16] == 0).all()  # away from the seams: kept
    assert (mask[:, 64 + 2 : 64 + 14] > 0).any()  # the seam blends into the original
    # The new area starts as the stretched border.
    assert np.array_equal(np.asarray(canvas.picture)[:, 0], np.asarray(image)[:, 0])


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
