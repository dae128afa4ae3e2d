"""The face fix and the upscaler through Cog's server, for both families: a real photograph
finished only (prompt_strength 0), and a generated image upscaled."""

from pathlib import Path

import numpy as np
from helpers import data_uri, output_images
from PIL import Image

PHOTOS = Path(__file__).parent / "data/photos"
FACE = (172, 70, 282, 190)  # tests/test_faces.py
FAST = {"prompt": "a portrait", "num_inference_steps": 4, "seed": 5}


def photo(name: str) -> Image.Image:
    return Image.open(PHOTOS / name).convert("RGB")


def test_only_the_face_region_changes_and_the_size_is_kept(server):
    astronaut, padding = photo("astronaut.jpg"), 32
    # SDXL's watermark (on by default) marks the whole image the model painted in: left out.
    unmarked = {"apply_watermark": False} if server.family == "sdxl" else {}
    result = server.predict(image=data_uri(astronaut), prompt_strength=0, face_fix=True,
                            face_fix_padding=padding, **unmarked, **FAST)  # fmt: skip
    [image] = output_images(result)
    out, before = np.asarray(image.convert("RGB")), np.asarray(astronaut)
    assert out.shape == before.shape
    padded = np.zeros(out.shape[:2], bool)
    assert "face fix: output 0: 1 found, 1 fixed" in result["logs"]
    margin = padding + 8  # the detector's box is within a few pixels of FACE
    padded[FACE[1] - margin : FACE[3] + margin, FACE[0] - margin : FACE[2] + margin] = True
    assert np.array_equal(out[~padded], before[~padded])
    face = (slice(FACE[1] + 20, FACE[3] - 20), slice(FACE[0] + 20, FACE[2] - 20))
    assert np.abs(out[face].astype(int) - before[face]).mean() > 5  # the face was repainted


def test_a_photo_without_a_face_is_returned_untouched_with_a_log_line(server):
    rocket = photo("rocket.jpg")
    result = server.predict(image=data_uri(rocket), prompt_strength=0, face_fix=True, **FAST)
    [image] = output_images(result)
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(rocket))
    assert "face fix: no face found in output 0" in result["logs"]


def test_a_generated_image_is_upscaled_to_the_factor_asked(server):
    result = server.predict(width=128, height=192, upscale=1.5, **FAST)
    [image] = output_images(result)
    assert image.size == (192, 288)
    assert "upscale: 1.5x to 192x288" in result["logs"]


def test_an_upscale_past_the_pixel_limit_fails_naming_it_and_the_server_goes_on(server):
    big = Image.new("RGB", (2100, 2100), (30, 60, 90))
    error = server.failure(image=data_uri(big), prompt_strength=0, upscale=4, **FAST)
    assert error.startswith("upscale: 2100x2100 upscaled 4x is 8400x8400, more than the")
    assert output_images(server.predict(width=128, height=128, **FAST))
