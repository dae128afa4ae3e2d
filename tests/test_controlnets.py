"""ControlNets in-process on tiny weights: shared components, parity with diffusers' own
ControlNet pipelines, and builds with and without ControlNet pins."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    ControlNetUnionModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetUnionPipeline,
)
from PIL import Image

from sdcog import generate
from sdcog.common.families import PIPELINE_KINDS
from sdcog.generate import Generator
from sdcog.models import pipelines
from sdcog.request.request import ControlSlot, Request
from sdcog.request.schedulers import make_scheduler
from sdcog.tools.tiny_weights import write_tiny_weights

SMALL = {"num_inference_steps": 3, "width": 128, "height": 128, "seed": 11}


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float64)


@pytest.mark.parametrize("family", list(PIPELINE_KINDS))
def test_one_unet_in_its_dtype_after_every_modes_controlnet_pipeline(
    make_weights, monkeypatch, control_image, family
):
    # bf16 stands in for CUDA's fp16: from_pipe without dtype would cast the UNet to fp32.
    for module in (pipelines, generate):
        monkeypatch.setattr(module, "device_and_dtype", lambda: ("cpu", torch.bfloat16))
    generator = Generator(make_weights(family))
    unet = generator.pipelines.base["txt2img"].unet
    pointers = [p.data_ptr() for p in unet.parameters()]
    used = []  # every pipeline the real Pipelines.get hands out
    get = generator.pipelines.get

    def recording_get(*args):
        used.append(get(*args))
        return used[-1]

    monkeypatch.setattr(generator.pipelines, "get", recording_get)
    slot = ControlSlot(1, "canny", control_image)
    for extra in ({}, {"image": control_image}, {"image": control_image, "mask": control_image}):
        generator(Request(prompt="x", controlnets=(slot,), **SMALL, **extra))
    assert [type(pipe).__name__.count("ControlNet") for pipe in used] == [1, 1, 1]
    for pipe in used:
        assert pipe.unet is unet and pipe.vae is generator.pipelines.base["txt2img"].vae
    assert unet.dtype == torch.bfloat16
    assert [p.data_ptr() for p in unet.parameters()] == pointers  # not copied, not cast


def diffusers_own(weights: Path, family: str, control: Image.Image, seed: int) -> np.ndarray:
    """The same request through diffusers' own ControlNet pipeline, loaded on its own."""
    common = {"local_files_only": True, "dtype": torch.float32}
    if family == "sd":
        controlnet = ControlNetModel.from_pretrained(
            weights / "controlnet_canny", variant="fp16", **common
        )
        pipe = StableDiffusionControlNetPipeline.from_pretrained(
            weights / "base", controlnet=controlnet, safety_checker=None,
            feature_extractor=None, **common,
        )  # fmt: skip
        control_args = {"image": control}
    else:
        from diffusers import AutoencoderKL

        controlnet = ControlNetUnionModel.from_pretrained(weights / "controlnet_union", **common)
        pipe = StableDiffusionXLControlNetUnionPipeline.from_pretrained(
            weights / "base", controlnet=controlnet, add_watermarker=False,
            vae=AutoencoderKL.from_pretrained(weights / "vae", **common), **common,
        )  # fmt: skip
        control_args = {"control_image": [control], "control_mode": [3]}
    pipe.scheduler = make_scheduler("DPMSolverMultistep", pipe.scheduler.config)
    image = pipe(
        prompt="a lighthouse", negative_prompt="", num_inference_steps=SMALL["num_inference_steps"],
        width=SMALL["width"], height=SMALL["height"], guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(seed), **control_args,
    ).images[0]  # fmt: skip
    return np.asarray(image, dtype=np.float64)


@pytest.mark.parametrize("family", list(PIPELINE_KINDS))
def test_equals_diffusers_own_controlnet_pipeline(make_weights, control_image, family):
    weights = make_weights(family)
    generator = Generator(weights)
    request = Request(
        prompt="a lighthouse", prompt_weighting="none", apply_watermark=family != "sdxl", **SMALL
    )
    slot = ControlSlot(1, "canny", control_image, preprocess=False)
    ours = pixels(generator(replace(request, controlnets=(slot,))).paths[0])
    theirs = diffusers_own(weights, family, Image.open(control_image).convert("RGB"), SMALL["seed"])
    assert np.abs(ours - theirs).mean() <= 2  # 2/255 of the 0..255 range
    # The comparison can fail: without the ControlNet, the image is far from diffusers' one.
    assert np.abs(pixels(generator(request).paths[0]) - theirs).mean() > 4


@pytest.mark.parametrize("family", list(PIPELINE_KINDS))
def test_builds_with_and_without_controlnet_pins(make_weights, tmp_path, control_image, family):
    """A plain request is bit-identical whether ControlNets are pinned or not; a kind whose
    weights are missing fails naming the input and the pin entry."""
    bare = tmp_path / "bare"
    write_tiny_weights(bare, family, controls=False)
    request = Request(prompt="a lighthouse", **SMALL)
    with_pins = Generator(make_weights(family))
    without = Generator(bare)
    assert (
        pixels(with_pins(request).paths[0]).tolist() == pixels(without(request).paths[0]).tolist()
    )
    entry = "controlnet_canny" if family == "sd" else "controlnet_union"
    slot = ControlSlot(2, "canny", control_image)
    with pytest.raises(ValueError, match=rf"controlnet_2: .*no canny ControlNet; pin \[{entry}\]"):
        without(Request(prompt="x", controlnets=(slot,), **SMALL))
    assert (
        pixels(without(request).paths[0]).tolist() == pixels(with_pins(request).paths[0]).tolist()
    )
