"""SDXL's watermark: bit for bit what diffusers' watermarker (invisible-watermark's dwtDct) makes
of the same image, at SDXL's sizes and odd ones, and its decoder reads the message back."""

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion_xl.watermark import StableDiffusionXLWatermarker
from imwatermark import WatermarkDecoder
from PIL import Image

from sdcog.outputs.watermark import BITS, apply_watermark


def diffusers_watermark(image: Image.Image) -> np.ndarray:
    """The reference: the pipeline's pixels in [-1, 1] through diffusers' watermarker."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / np.float32(127.5) - 1)
    marked = StableDiffusionXLWatermarker().apply_watermark(pixels.permute(2, 0, 1)[None])
    return ((marked[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def picture(height: int, width: int, seed: int) -> Image.Image:
    """Smooth gradients with grain: large and small wavelet coefficients both."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) % 256], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    "height,width", [(1024, 1024), (768, 1344), (1216, 832), (256, 256), (1000, 1000), (520, 512)]
)
def test_bit_for_bit_diffusers_watermark(height, width):
    for image in (picture(height, width, seed=1),
                  Image.fromarray(np.random.default_rng(2).integers(0, 256, (height, width, 3),
                                                                    dtype=np.uint8))):  # fmt: skip
        [marked] = apply_watermark([image])
        assert marked.size == image.size
        assert np.array_equal(np.asarray(marked), diffusers_watermark(image))
        assert not np.array_equal(np.asarray(marked), np.asarray(image))


def test_the_library_decoder_reads_the_message():
    [marked] = apply_watermark([picture(1024, 1024, seed=3)])
    bits = WatermarkDecoder("bits", len(BITS)).decode(np.asarray(marked)[:, :, ::-1], "dwtDct")
    assert (np.array(bits, dtype=int) == BITS.astype(int)).mean() >= 0.95


def test_narrow_images_stay_unmarked_and_small_wide_ones_are_marked():
    narrow = picture(512, 192, seed=4)
    assert apply_watermark([narrow]) == [narrow]
    small = picture(192, 256, seed=5)  # the library refuses fewer than 256x256 pixels
    [marked] = apply_watermark([small])
    assert not np.array_equal(np.asarray(marked), np.asarray(small))
