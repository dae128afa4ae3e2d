"""Single-file checkpoints converted offline, with the configs this package ships."""

import shutil

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from sdcog.common.families import Family, of_checkpoint
from sdcog.models import checkpoints


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_a_single_file_converts_to_the_same_tensors(model_repos, tiny_weights, tmp_path, family):
    checkpoint = model_repos.root / f"{family}.safetensors"
    found = of_checkpoint(checkpoint, "base_model", family)
    checkpoints.convert(checkpoint, found, tiny_weights, tmp_path / "out", torch.float32)
    original = DiffusionPipeline.from_pretrained(model_repos.hub.root / "org" / family)
    converted = DiffusionPipeline.from_pretrained(tmp_path / "out")
    names = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    for name in names:
        want, got = getattr(original, name).state_dict(), getattr(converted, name).state_dict()
        assert want.keys() == got.keys(), name
        assert all(torch.equal(want[k], got[k]) for k in want), name
    assert converted.scheduler.config.prediction_type == original.scheduler.config.prediction_type
    # The tokenizers pad as the family's do (SD 2.x and SDXL's second with "!").
    pads = [converted.tokenizer.pad_token] + (
        [converted.tokenizer_2.pad_token] if family == "sdxl" else []
    )
    assert pads == {"sd1": ["<|endoftext|>"], "sd2": ["!"], "sdxl": ["<|endoftext|>", "!"]}[family]


def test_without_a_builds_own_configs_the_shipped_ones_serve(tmp_path, tiny_weights):
    assert checkpoints.configs(Family("sd1"), tiny_weights).is_relative_to(tiny_weights)
    shipped = checkpoints.configs(Family("sdxl"), tmp_path)
    assert shipped == checkpoints.SHIPPED / "sdxl"


# Parameters of the real models, as published: a wrong shipped config fails here.
REAL = {
    "sd1": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd2": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
             "text_encoder_2": 694_659_840},
}  # fmt: skip


@pytest.mark.parametrize("family", REAL)
def test_the_shipped_configs_are_the_real_architectures(family):
    folder = checkpoints.SHIPPED / family

    def count(model: torch.nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    with init_empty_weights():  # shapes only, no memory
        built = {
            "unet": UNet2DConditionModel.from_config(
                UNet2DConditionModel.load_config(folder / "unet")
            ),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
        }
        if family == "sdxl":
            config = CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
            built["text_encoder_2"] = CLIPTextModelWithProjection(config)
    assert {name: count(model) for name, model in built.items()} == REAL[family]


def test_a_single_vae_converts_with_its_models_config(model_repos, tmp_path):
    from ldm_checkpoint import _vae_key
    from safetensors.torch import load_file, save_file

    repo = model_repos.hub.root / "org/vae-sd"
    config = AutoencoderKL.load_config(repo)
    state = {}
    for key, tensor in load_file(repo / "diffusion_pytorch_model.safetensors").items():
        ldm = _vae_key(key, config)
        if ".mid.attn_1." in ldm and ldm.endswith("weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        state[ldm] = tensor.contiguous()
    save_file(state, tmp_path / "vae.safetensors")
    model_vae = model_repos.hub.root / "org/sd1/vae"
    checkpoints.convert_vae(
        tmp_path / "vae.safetensors", model_vae, tmp_path / "vae", torch.float32
    )
    want = AutoencoderKL.from_pretrained(repo).state_dict()
    got = AutoencoderKL.from_pretrained(tmp_path / "vae").state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    shutil.rmtree(tmp_path / "vae")


def test_a_v_prediction_fine_tune_is_sampled_as_one(model_repos, tiny_weights, tmp_path):
    """NoobAI's and Illustrious' v-pred single files carry a `v_pred` key (ComfyUI and Forge read
    it): converted here, through base_model or a build's pin, they sample with v-prediction,
    zero-terminal-SNR betas and trailing timesteps; without the key nothing changes."""
    from safetensors.torch import load_file, save_file

    from sdcog.request.schedulers import make_scheduler
    from sdcog.tools.download_weights import convert_single_file

    plain = model_repos.root / "sdxl.safetensors"
    vpred = tmp_path / "vpred.safetensors"
    save_file(load_file(plain) | {"v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}, vpred)
    found = of_checkpoint(vpred, "base_model", "sdxl")
    checkpoints.convert(vpred, found, tiny_weights, tmp_path / "base_model", torch.float32)
    config_dir = tmp_path / "config"  # a build's pin converts with a diffusers repo's configs
    shutil.copytree(model_repos.hub.root / "org/sdxl", config_dir)
    convert_single_file(vpred, config_dir, tmp_path / "pin")
    for target in ("base_model", "pin"):
        config = DiffusionPipeline.from_pretrained(tmp_path / target).scheduler.config
        assert (config.prediction_type, config.rescale_betas_zero_snr, config.timestep_spacing) == (
            "v_prediction",
            True,
            "trailing",
        ), target
        for name in ("K_EULER", "DPMSolverMultistep", "DDIM"):  # and every request's scheduler
            assert make_scheduler(name, config).config.prediction_type == "v_prediction"
    checkpoints.convert(plain, found, tiny_weights, tmp_path / "plain", torch.float32)
    config = DiffusionPipeline.from_pretrained(tmp_path / "plain").scheduler.config
    assert config.prediction_type == "epsilon"
