from pathlib import Path

import pytest

from sdcog.request import Request


def test_modes():
    assert Request(prompt="x").mode == "txt2img"
    assert Request(prompt="x", image=Path("i")).mode == "img2img"
    assert Request(prompt="x", image=Path("i"), mask=Path("m")).mode == "inpaint"


def test_mask_needs_an_image():
    with pytest.raises(ValueError, match="mask: a mask needs an image"):
        Request(prompt="x", mask=Path("m"))


def test_image_needs_at_least_one_denoising_step():
    with pytest.raises(ValueError, match=r"prompt_strength: .* at least 1 \(got 0.01 x 50\)"):
        Request(prompt="x", image=Path("i"), prompt_strength=0.01)
    Request(prompt="x", image=Path("i"), prompt_strength=0.02)
