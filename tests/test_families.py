"""A model's family from its files: configs of a diffusers folder, keys of a single file."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdcog.common.families import Facts, of_checkpoint, of_folder


@pytest.mark.parametrize(
    ("family", "label", "width"),
    [("sd1", "SD 1.x", 32), ("sd2", "SD 2.x, v-prediction", 48), ("sdxl", "SDXL", 80)],
)
def test_each_family_from_its_folder_and_its_single_file(model_repos, family, label, width):
    folder = model_repos.hub.root / "org" / family
    assert str(of_folder(folder, "base_model", family)) == label
    facts = Facts.of(folder, "base_model", family)
    assert facts.unet.cross_attention_dim == width
    checkpoint = model_repos.root / f"{family}.safetensors"
    assert of_checkpoint(checkpoint, "base_model", family) == facts.family


def test_the_builds_own_models_have_families(tiny_weights, sdxl_weights):
    assert str(Facts.of(tiny_weights / "base", "base_model", "x").family) == "SD 1.x"
    facts = Facts.of(sdxl_weights / "base", "base_model", "x", sdxl_weights / "vae")
    assert (str(facts.family), facts.vae_scaling) == ("SDXL", 0.13025)


def test_what_is_not_a_base_model_is_refused_naming_the_input(model_repos, tmp_path):
    with pytest.raises(ValueError, match=r"^base_model: org/vae-sd is not a Stable Diffusion"):
        of_folder(model_repos.hub.root / "org/vae-sd", "base_model", "org/vae-sd")
    tensors = load_file(model_repos.root / "sdxl.safetensors")
    refiner = {k.replace("embedders.1.", "embedders.0."): v for k, v in tensors.items()
               if not k.startswith("conditioner.embedders.0.")}  # fmt: skip
    save_file(refiner, tmp_path / "refiner.safetensors")
    with pytest.raises(ValueError, match="^base_model: r is an SDXL refiner"):
        of_checkpoint(tmp_path / "refiner.safetensors", "base_model", "r")
    inpaint = load_file(model_repos.root / "sd1.safetensors")
    key = "model.diffusion_model.input_blocks.0.0.weight"
    inpaint[key] = inpaint[key].repeat(1, 3, 1, 1)[:, :9].contiguous()
    save_file(inpaint, tmp_path / "inpaint.safetensors")
    with pytest.raises(ValueError, match="^base_model: i is an inpainting checkpoint"):
        of_checkpoint(tmp_path / "inpaint.safetensors", "base_model", "i")
    save_file({"lora_unet_x.lora_down.weight": inpaint[key]}, tmp_path / "lora.safetensors")
    with pytest.raises(ValueError, match="^base_model: l holds no Stable Diffusion UNet"):
        of_checkpoint(tmp_path / "lora.safetensors", "base_model", "l")


def test_an_sd2_base_folder_is_epsilon(model_repos, tmp_path):
    folder = tmp_path / "sd2-base"
    shutil.copytree(model_repos.hub.root / "org/sd2", folder)
    config = folder / "scheduler/scheduler_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"prediction_type": "epsilon"}))
    assert str(of_folder(folder, "base_model", "x")) == "SD 2.x"


def test_a_checkpoint_of_another_shape_is_not_called_inpainting(model_repos, tmp_path):
    """Every shape one larger (the probe's file): its UNet takes 5 channels, which is said."""
    tensors = {k: torch.zeros([s + 1 for s in v.shape])
               for k, v in load_file(model_repos.root / "sd1.safetensors").items()}  # fmt: skip
    save_file(tensors, tmp_path / "wide.safetensors")
    with pytest.raises(ValueError, match=r"^base_model: w's UNet takes 5 input channels; a "
                                         r"Stable Diffusion checkpoint's takes 4 \(9 for "
                                         r"inpainting\)"):  # fmt: skip
        of_checkpoint(tmp_path / "wide.safetensors", "base_model", "w")


def edited(model_repos, tmp_path, file: str, **changes) -> Path:
    """org/sd1's configs with `file`'s fields changed."""
    folder = tmp_path / "edited"
    shutil.copytree(
        model_repos.hub.root / "org/sd1", folder, ignore=shutil.ignore_patterns("*.safetensors")
    )
    config = folder / file
    config.write_text(json.dumps(json.loads(config.read_text()) | changes))
    return folder


@pytest.mark.parametrize(
    ("changes", "refusal"),
    [
        ({"sample_size": 320}, r"native size \(320 latents x 8\) is not a size width and height "
                               r"allow \(128 to 2048, a multiple of 8\)"),
        ({"sample_size": 12}, r"native size \(12 latents x 8\) is not a size"),
        ({"sample_size": None}, r"native size \(None latents x 8\) is not a size"),
        ({"in_channels": 5}, r"UNet takes 5 input channels; a Stable Diffusion UNet takes 4 "
                             r"\(9 for inpainting\)"),
    ],
    ids=["too-large", "too-small", "none", "channels"],
)  # fmt: skip
def test_a_unet_config_that_would_push_a_request_past_the_limits_is_refused(
    model_repos, tmp_path, changes, refusal
):
    folder = edited(model_repos, tmp_path, "unet/config.json", **changes)
    with pytest.raises(ValueError, match=rf"^base_model: org/x's {refusal}"):
        Facts.of(folder, "base_model", "org/x")
