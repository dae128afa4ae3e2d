"""SDXL's invisible watermark: the bits and method diffusers' SDXL pipelines embed with the
invisible-watermark library (dwtDct), computed the same way, without its per-block Python loop.

dwtDct, as invisible-watermark implements it: the image goes to YUV (OpenCV); the U channel's
Haar wavelet approximation (PyWavelets; here its float32 sums in NumPy) is cut into 4x4 blocks,
and in each block the largest off-corner coefficient is quantised to a step of 36 so that its
remainder carries one bit of the 48-bit message, block after block in row order; then back
through the inverse wavelet (with the horizontal and vertical details swapped, as the library
does) and to RGB. The library loops over the blocks in Python (16,384 at 1024x1024); here one
vectorised pass does the same float32 arithmetic, so images come out bit for bit as diffusers'
(tests compare them, and read the message back with the library's decoder), 5x faster (1024x1024
on a CPU: 24 ms instead of 113-135 ms).

Pure: nothing shared is changed, so nothing can leak. Images narrower than 256 px stay unmarked,
as diffusers leaves them; smaller than 256x256 but wider are marked (the library would refuse
them, and a request failed for it).
"""

import cv2
import numpy as np
from diffusers.pipelines.stable_diffusion_xl.watermark import WATERMARK_BITS
from PIL import Image

BITS = np.array(WATERMARK_BITS, dtype=np.float32)
SCALE = 36  # the quantisation step of the U channel (the library's scales=[0, 36, 36])
BLOCK = 4
HAAR = np.float32(np.sqrt(0.5))  # the Haar filters' taps, as PyWavelets rounds them


def apply_watermark(images: list[Image.Image]) -> list[Image.Image]:
    """Embed the watermark in each image."""
    return [_marked(image) if image.width >= 256 else image for image in images]


def _marked(image: Image.Image) -> Image.Image:
    # The pipeline's round trip: pixels to [-1, 1], then diffusers' to [0, 255] in float32.
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(127.5) - 1
    bgr = (np.float32(255) * (pixels / 2 + np.float32(0.5)))[:, :, ::-1]
    marked = _embed(np.ascontiguousarray(bgr))[:, :, ::-1]
    marked = np.clip(2 * (marked / np.float32(255) - np.float32(0.5)), -1, 1)
    return Image.fromarray(((marked + 1) * np.float32(127.5)).round().clip(0, 255).astype(np.uint8))


def _embed(bgr: np.ndarray) -> np.ndarray:
    """invisible-watermark's EmbedMaxDct.encode for BITS, vectorised over the blocks."""
    rows, cols = bgr.shape[0] // 4 * 4, bgr.shape[1] // 4 * 4
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
    # pywt.dwt2's (cA, (cH, cV, cD)) are (aa, (da, ad, dd)): a/d along rows, then columns.
    low, high = _haar(yuv[:rows, :cols, 1], axis=0)
    (aa, ad), (da, dd) = _haar(low, axis=1), _haar(high, axis=1)
    _quantise(aa)
    # The library hands pywt.idwt2 (cA, (cV, cH, cD)): the two details swapped.
    yuv[:rows, :cols, 1] = _inverse_haar(_inverse_haar(aa, da, 1), _inverse_haar(ad, dd, 1), 0)
    return cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR)


def _haar(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """One level of the Haar wavelet along `axis` (even length): PyWavelets' float32 sums."""
    even, odd = (x[0::2], x[1::2]) if axis == 0 else (x[:, 0::2], x[:, 1::2])
    return HAAR * even + HAAR * odd, HAAR * even - HAAR * odd


def _inverse_haar(low: np.ndarray, high: np.ndarray, axis: int) -> np.ndarray:
    shape = (low.shape[0] * 2, low.shape[1]) if axis == 0 else (low.shape[0], low.shape[1] * 2)
    out = np.empty(shape, np.float32)
    even, odd = (out[0::2], out[1::2]) if axis == 0 else (out[:, 0::2], out[:, 1::2])
    even[:] = HAAR * low + HAAR * high
    odd[:] = HAAR * low - HAAR * high
    return out


def _quantise(frame: np.ndarray) -> None:
    """In each 4x4 block of `frame` (in place), the largest coefficient but the first one set to
    a multiple of SCALE plus a quarter (bit 0) or three quarters (bit 1), sign kept."""
    block_rows, block_cols = frame.shape[0] // BLOCK, frame.shape[1] // BLOCK
    area = frame[: block_rows * BLOCK, : block_cols * BLOCK]
    blocks = (
        area.reshape(block_rows, BLOCK, block_cols, BLOCK)
        .transpose(0, 2, 1, 3)
        .reshape(-1, BLOCK * BLOCK)
    )
    number = np.arange(len(blocks))
    position = np.abs(blocks[:, 1:]).argmax(axis=1) + 1
    value = blocks[number, position]
    bit = BITS[number % len(BITS)] * np.float32(0.5)
    step = (np.abs(value) // SCALE + np.float32(0.25) + bit) * np.float32(SCALE)
    blocks[number, position] = np.where(value >= 0, step, -step)
    area[:] = (
        blocks.reshape(block_rows, block_cols, BLOCK, BLOCK)
        .transpose(0, 2, 1, 3)
        .reshape(block_rows * BLOCK, block_cols * BLOCK)
    )
