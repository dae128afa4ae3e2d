"""Outpainting, inpainting at full resolution (mask_margin) and hires fix, through Cog's server
for both families, and outpainting with an inpainting fine-tune in-process."""

import io
import json
import re
import shutil

import numpy as np
import pytest
from diffusers import UNet2DConditionModel
from helpers import data_uri, output_images
from PIL import Image

from sdcog.generate import Generator
from sdcog.request import images
from sdcog.request.request import Request

FAST = {"num_inference_steps": 3, "seed": 11}


def photo(width: int = 192, height: int = 128) -> Image.Image:
    rng = np.random.default_rng(5)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def pixels(result: dict) -> np.ndarray:
    (image,) = output_images(result)
    return np.asarray(image.convert("RGB"))


def test_outpainting_extends_the_image_and_keeps_its_pixels(server):
    image = photo()
    sides = {"outpaint_left": 64, "outpaint_top": 128, "outpaint_right": 0, "outpaint_bottom": 64}
    request = {"prompt": "a wide landscape", "image": data_uri(image), **sides, **FAST}
    result = server.predict(**request)
    out = pixels(result)
    assert out.shape == (128 + 128 + 64, 192 + 64, 3)
    seam = 8  # the default outpaint_blur: exactly that many pixels of the original are blended
    kept = out[128 + seam : 128 + 128 - seam, 64 + seam :]
    assert np.array_equal(kept, np.asarray(image)[seam:-seam, seam:])
    assert not np.array_equal(out[128, 64 + seam :], np.asarray(image)[0, seam:])  # the seam
    stretched = np.pad(np.asarray(image), ((128, 64), (64, 0), (0, 0)), mode="edge")
    assert np.abs(out[:100].astype(int) - stretched[:100]).mean() > 5  # the new area is painted
    assert server.predict(**request)["output"] == result["output"]


def test_mask_margin_paints_the_crop_and_leaves_the_rest_untouched(server):
    image = photo(256, 192)
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (96, 64, 136, 104))
    request = {"prompt": "a red door", "image": data_uri(image), "mask": data_uri(mask),
               "mask_margin": 24, **FAST}  # fmt: skip
    result = server.predict(**request)
    out = pixels(result)
    assert out.shape == (192, 256, 3)  # the image's own size
    outside = np.ones(out.shape[:2], bool)
    outside[64 - 24 : 104 + 24, 96 - 24 : 136 + 24] = False
    assert np.array_equal(out[outside], np.asarray(image)[outside])
    assert np.abs(out[70:98, 100:130].astype(int) - np.asarray(image)[70:98, 100:130]).mean() > 5
    assert "inpaint 512x512" in result["logs"] or "inpaint 1024x1024" in result["logs"]
    assert server.predict(**request)["output"] == result["output"]


def test_mask_margin_crops_the_control_map_like_the_image(server):
    image = photo(256, 192)
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (96, 64, 136, 104))
    box = (96 - 16, 64 - 16, 136 + 16, 104 + 16)  # the mask's box plus mask_margin
    control = photo(256, 192).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    outside_blacked = Image.new("RGB", control.size)
    outside_blacked.paste(control.crop(box), box[:2])
    request = {"prompt": "a window", "image": data_uri(image), "mask": data_uri(mask),
               "mask_margin": 16, "controlnet_1": "canny", "controlnet_1_preprocess": False,
               **FAST}  # fmt: skip
    steered = server.predict(**request, controlnet_1_image=data_uri(control))["output"]
    # Only the part of the map over the crop counts: the rest may be anything.
    assert (
        server.predict(**request, controlnet_1_image=data_uri(outside_blacked))["output"] == steered
    )
    plain = {k: v for k, v in request.items() if not k.startswith("controlnet_1")}
    assert server.predict(**plain)["output"] != steered


def test_hires_fix_runs_two_passes_at_the_logged_sizes(server):
    size = 256 if server.family == "sd" else 512
    request = {"prompt": "a city at night", "width": size, "height": size, **FAST}
    hires = server.predict(**request, hires_scale=2, hires_strength=0.6, hires_steps=4)
    logs = hires["logs"]
    assert f"txt2img {size // 2}x{size // 2} (hires fix: first pass)" in logs
    assert f"hires fix: second pass {size}x{size}, strength 0.6, 4 steps" in logs
    assert len(re.findall(r"\| (\d+)/\1 \[", logs)) >= 2  # two progress bars ran to the end
    assert pixels(hires).shape == (size, size, 3)
    assert hires["output"] != server.predict(**request)["output"]
    again = server.predict(**request, hires_scale=2, hires_strength=0.6, hires_steps=4)
    assert again["output"] == hires["output"]


def test_hires_fix_with_controlnet_gets_maps_at_each_size(server):
    edges = data_uri(photo(256, 256))
    result = server.predict(prompt="a house", width=256, height=256, hires_scale=1.5,
                            controlnet_1="canny", controlnet_1_image=edges, **FAST)  # fmt: skip
    assert "(hires fix: first pass)" in result["logs"] and pixels(result).shape == (256, 256, 3)


@pytest.mark.parametrize(
    ("input", "message"),
    [
        ({"outpaint_left": 64}, "outpaint_left: outpainting needs an image"),
        ({"mask_margin": 16}, "mask_margin: inpainting at full resolution needs a mask"),
        ({"image": "IMAGE", "outpaint_top": 64, "width": 256}, "width: with outpainting"),
        ({"image": "IMAGE", "mask": "MASK", "mask_margin": 8, "outpaint_top": 64},
         "mask_margin: not together with outpainting"),
        ({"image": "IMAGE", "hires_scale": 1.5}, "hires_scale: hires fix is for text-to-image"),
        ({"hires_steps": 10}, "hires_steps: only with hires_scale above 1"),
        ({"hires_scale": 2, "hires_strength": 0.01}, "hires_strength: hires_strength x"),
        ({"sizing_strategy": "input_image"}, "sizing_strategy: input_image needs image"),
        ({"image": "IMAGE", "sizing_strategy": "controlnet_2_image"},
         "sizing_strategy: controlnet_2_image needs controlnet_2 and controlnet_2_image"),
        ({"image": "IMAGE", "outpaint_top": 64, "sizing_strategy": "input_image"},
         "sizing_strategy: with outpainting the size follows from the image"),
    ],
)  # fmt: skip
def test_combinations_that_cannot_work_name_the_input(sd_server, input, message):
    files = {"IMAGE": data_uri(photo(64, 64)), "MASK": data_uri(Image.new("L", (64, 64), 255))}
    input = {k: files.get(v, v) if isinstance(v, str) else v for k, v in input.items()}
    assert sd_server.failure(prompt="x", **FAST, **input).startswith(message)
    output_images(sd_server.predict(prompt="x", width=128, height=128, **FAST))


@pytest.mark.parametrize(
    ("strategy", "named"),
    [
        ("input_image", "image"),
        ("mask_image", "mask"),
        ("controlnet_1_image", "controlnet_1_image"),
    ],
)
def test_sizing_strategy_sizes_from_the_image_it_names(server, strategy, named):
    """fofr's sizing_strategy: the size follows the named image (its aspect at the model's
    native size, as without width and height), whatever width and height say."""
    wide, tall = photo(192, 96), photo(96, 160)
    painted = wide if named in ("image", "mask") else tall  # a mask has its image's size
    control = wide if named == "controlnet_1_image" else tall
    mask = Image.new("L", painted.size, 255)
    files = {"image": painted, "mask": mask, "controlnet_1_image": control}
    request = {"prompt": "x", **FAST, **{k: data_uri(v) for k, v in files.items()},
               "controlnet_1": "canny", "prompt_strength": 0.5}  # fmt: skip
    by_strategy = output_images(
        server.predict(**request, width=768, height=768, sizing_strategy=strategy)
    )[0]
    native = 1024 if server.family == "sdxl" else 512
    assert by_strategy.size == images.output_size(None, None, native, wide)
    assert by_strategy.width > by_strategy.height


@pytest.fixture(scope="module")
def inpainting_weights(tiny_weights, tmp_path_factory):
    """The tiny SD weights with a 9-channel UNet: an inpainting fine-tune's layout."""
    weights = tmp_path_factory.mktemp("inpainting") / "w"
    shutil.copytree(tiny_weights, weights)
    config = json.loads((weights / "base/unet/config.json").read_text())
    unet = UNet2DConditionModel.from_config({**config, "in_channels": 9})
    shutil.rmtree(weights / "base/unet")
    unet.save_pretrained(weights / "base/unet", safe_serialization=True)
    return weights


def test_outpainting_with_an_inpainting_fine_tune(inpainting_weights, tmp_path):
    image = photo(128, 128)
    image.save(tmp_path / "in.png")
    generator = Generator(inpainting_weights)
    assert generator.pipelines.base["inpaint"].unet.config.in_channels == 9
    request = Request(prompt="x", image=tmp_path / "in.png", outpaint_right=64, outpaint_blur=0,
                      num_inference_steps=2, seed=1)  # fmt: skip
    (path,) = generator(request).paths
    out = np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"))
    assert out.shape == (128, 192, 3)
    assert np.array_equal(out[:, :128], np.asarray(image))
    # Text to image on it is refused by name, not failed inside the UNet.
    with pytest.raises(ValueError, match=r"^base_model: the build's model is an inpainting model"):
        generator(Request(prompt="x", num_inference_steps=2, width=128, height=128))
