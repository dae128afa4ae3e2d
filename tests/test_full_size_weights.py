"""Full-size random weights have the real models' architectures: their parameter counts are the
published ones (counted on the meta device: nothing is allocated)."""

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from sdcog.tools import full_size_weights as full


def count(build) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


@pytest.mark.parametrize(
    ("build", "parameters"),
    [
        (lambda: UNet2DConditionModel(**full.SD15_UNET), 859_520_964),
        (lambda: CLIPTextModel(full._text(full.CLIP_L)), 123_060_480),
        (lambda: AutoencoderKL(**full.VAE), 83_653_863),
        (lambda: UNet2DConditionModel(**full.SDXL_UNET), 2_567_463_684),
        (lambda: CLIPTextModelWithProjection(full._text(full.CLIP_BIG_G)), 694_659_840),
    ],
    ids=["sd15-unet", "clip-l", "vae", "sdxl-unet", "clip-big-g"],
)
def test_published_parameter_counts(build, parameters):
    assert count(build) == parameters
