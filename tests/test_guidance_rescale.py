"""guidance_rescale (diffusers' CFG rescale, what v-prediction fine-tunes advise): it reaches the
pipelines that take it and changes their images; where diffusers has none it is refused by name
before any work."""

import numpy as np
import pytest
from PIL import Image

from sdcog.generate import Generator
from sdcog.request.request import Request

SMALL = {"prompt": "a harbour", "width": 128, "height": 128, "num_inference_steps": 3, "seed": 2}


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def generator(request, make_weights) -> Generator:
    return Generator(make_weights(request.param))


def pixels(generator: Generator, **inputs) -> np.ndarray:
    [path] = generator(Request(**SMALL, **inputs)).paths
    return np.asarray(Image.open(path))


def test_it_changes_the_image_and_nothing_after(generator):
    plain = pixels(generator)
    rescaled = pixels(generator, guidance_rescale=0.7)
    assert not np.array_equal(plain, rescaled)
    assert np.array_equal(pixels(generator), plain)


def test_where_diffusers_has_none_it_is_refused_naming_it(generator, tmp_path):
    Image.new("RGB", (128, 128), (20, 90, 160)).save(tmp_path / "in.png")
    sd = not generator.pipelines.family.traits.sdxl_inputs
    image = {"image": tmp_path / "in.png", "prompt_strength": 0.5}
    control = {"controlnet_1": "canny", "controlnet_1_image": str(tmp_path / "in.png")}
    cases = [control] + ([image, {"hires_scale": 2}] if sd else [])
    for case in cases:
        request = Request.from_inputs({**SMALL, **case, "guidance_rescale": 0.7}, local_paths=True)
        with pytest.raises(ValueError, match="^guidance_rescale: "):
            generator(request)
    if not sd:  # SDXL's image-to-image takes it
        assert pixels(generator, **image, guidance_rescale=0.7).shape == (128, 128, 3)
