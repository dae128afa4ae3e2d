"""DeepCache: the same features reused as the DeepCache package, with every recipe, and nothing
left behind."""

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from DeepCache import DeepCacheSDHelper
from diffusers import DDIMScheduler, UNet2DConditionModel
from PIL import Image

from sdcog.common.families import PIPELINE_KINDS
from sdcog.generate import Generator
from sdcog.request.request import ControlSlot, Request
from sdcog.speed import deepcache

SMALL = {"width": 128, "height": 128, "num_inference_steps": 7, "seed": 3}


@pytest.fixture(scope="module", params=list(PIPELINE_KINDS))
def generator(request, make_weights) -> Generator:
    return Generator(make_weights(request.param))


# Two layers per block (as in the real models; the tiny ones have one), so that every branch
# of a block means something different.
UNETS = {
    "sd": {"down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
           "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")},
    "sdxl": {"down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
             "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
             "transformer_layers_per_block": (1, 1, 2), "use_linear_projection": True},
}  # fmt: skip


def denoise(unet: UNet2DConditionModel, scheduler: DDIMScheduler) -> list[torch.Tensor]:
    """Each step's UNet output, as a pipeline calls it (positional sample and timestep)."""
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 16, 16, generator=generator)
    context = torch.randn(2, 77, 32, generator=generator)
    outputs = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            outputs.append(unet(sample, t, encoder_hidden_states=context).sample)
            sample = scheduler.step(outputs[-1], t, sample).prev_sample
    return outputs


@pytest.mark.parametrize("family", list(PIPELINE_KINDS))
def test_same_reuse_as_the_deepcache_package_on_every_branch(family):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32, 32), layers_per_block=2, cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=8, sample_size=16, **UNETS[family],
    ).eval()  # fmt: skip
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(7)
    plain = denoise(unet, scheduler)
    runs: list[str] = []  # resnets that really ran (their conv1 runs only then)
    for name, module in unet.named_modules():
        if name.endswith("conv1"):
            module.register_forward_hook(lambda *_, name=name: runs.append(name))
    results = set()
    for branch in range(deepcache.branches(unet)):
        helper = DeepCacheSDHelper(pipe=SimpleNamespace(unet=unet, scheduler=scheduler))
        helper.set_params(cache_interval=3, cache_branch_id=branch)
        helper.enable()
        try:
            runs.clear()
            theirs = denoise(unet, scheduler)
            their_runs = sorted(runs)
        finally:
            helper.disable()
            for module in unet.modules():  # the package leaves its wrappers as attributes
                module.__dict__.pop("forward", None)
        runs.clear()
        with deepcache.cached({"base": unet}, 3, branch) as states:
            ours = denoise(unet, scheduler)
        assert all(map(torch.equal, ours, theirs)), branch
        assert sorted(runs) == their_runs, branch  # the same work, not only the same result
        assert (states["base"].reused, states["base"].total) == (4, 7)
        assert all(map(torch.equal, denoise(unet, scheduler), plain))
        results.add(ours[-1].sum().item())
    assert len(results) == deepcache.branches(unet)  # every branch reuses something else


def deep_calls(unet) -> list[int]:
    """Counts the mid block's real runs (its first resnet runs only when the block does)."""
    calls: list[int] = []
    unet.mid_block.resnets[0].register_forward_hook(lambda *_: calls.append(1))
    return calls


def leftovers(generator: Generator) -> list[str]:
    unets = [generator.pipelines.base["txt2img"].unet]
    if generator.pipelines.refiner:
        unets.append(generator.pipelines.refiner["txt2img"].unet)
    found = []
    for unet in unets:
        found += [name for name, m in unet.named_modules() if "forward" in m.__dict__]
        found += ["pre-hook"] * len(unet._forward_pre_hooks)
    return found


def pixels(generator: Generator, **input) -> np.ndarray:
    paths = generator(Request(prompt="a cat", **{**SMALL, **input})).paths
    return np.stack([np.asarray(Image.open(path), dtype=np.float64) for path in paths])


def recipes(family: str, control_image, lora: str) -> dict[str, dict]:
    slot = ControlSlot(1, "canny", control_image)
    found = {
        "txt2img": {},
        "two batches": {"num_outputs": 2},
        "hires fix": {"hires_scale": 1.5, "width": 192, "height": 192},
        "img2img": {"image": control_image, "prompt_strength": 0.6},
        "lora": {"lora_weights": (lora,), "lora_scales": (1.0,)},
        "controlnet": {"controlnets": (slot,)},
    }
    if family == "sdxl":
        found["expert ensemble"] = {"refine": "expert_ensemble_refiner", "high_noise_frac": 0.5}
        found["base image refiner"] = {"refine": "base_image_refiner", "refine_steps": 4}
    return found


def test_every_recipe_reuses_deep_features_and_leaves_nothing(
    generator, control_image, adapter_refs, monkeypatch
):
    from sdcog.denoise import denoise

    monkeypatch.setattr(denoise, "MAX_BATCH_PIXELS", 128 * 128)  # one image per batch
    family = generator.pipelines.family.pipeline
    calls = deep_calls(generator.pipelines.base["txt2img"].unet)
    for name, extra in recipes(family, control_image, adapter_refs[family]["a"]).items():
        calls.clear()
        plain = pixels(generator, **extra)
        plain_calls = len(calls)
        calls.clear()
        cached = pixels(generator, deepcache_interval=3, **extra)
        assert 0 < len(calls) < 0.6 * plain_calls, name  # about a third at interval 3
        assert not np.array_equal(cached, plain), name
        assert not leftovers(generator), name
        assert np.array_equal(pixels(generator, **extra), plain), name


def test_the_image_stays_close(generator):
    plain = pixels(generator, num_inference_steps=12)
    for interval in (2, 3, 5):
        cached = pixels(generator, num_inference_steps=12, deepcache_interval=interval)
        assert 0 < np.abs(cached - plain).mean() < 40, interval  # random weights: loose


@contextmanager
def full_calls(unet) -> Iterator[list[bool]]:
    """For each UNet call, whether it ran in full (its mid block ran) or reused."""
    runs: list[bool] = []
    handles = [
        unet.register_forward_pre_hook(lambda *_: runs.append(False)),
        unet.mid_block.resnets[0].register_forward_hook(lambda *_: runs.__setitem__(-1, True)),
    ]
    try:
        yield runs
    finally:
        for handle in handles:
            handle.remove()


# Interval 3 between 0.3 and 0.8 of each pass: the steps outside run in full, the window
# counts its interval from its own first step.
WINDOW = {"deepcache_interval": 3, "deepcache_start": 0.3, "deepcache_end": 0.8}
F, R = True, False


@pytest.mark.parametrize(
    "extra, expected",
    [
        ({}, [F, F, F, F, R, R, F, R, F, F]),  # 10 steps: the window is steps 3 to 7
        # 5 steps at strength 0.5: the window is steps 2 and 3 of the five
        ({"prompt_strength": 0.5, "image": "control"}, [F, F, F, R, F]),
    ],
    ids=["txt2img", "img2img"],
)
def test_a_window_runs_the_steps_outside_it_in_full(generator, control_image, extra, expected):
    if extra.get("image"):
        extra = extra | {"image": control_image}
    with full_calls(generator.pipelines.base["txt2img"].unet) as runs:
        pixels(generator, **WINDOW, **extra, num_inference_steps=10)
    assert runs == expected
    assert not leftovers(generator)


def test_the_window_counts_each_pass_apart_the_refiners_too(generator):
    if generator.pipelines.family.pipeline != "sdxl":
        pytest.skip("the refiner is SDXL's")
    # The base runs the first half of 10 steps, the refiner the second: five calls each,
    # windowed as [F, F, F, R, F].
    ensemble = {"refine": "expert_ensemble_refiner", "high_noise_frac": 0.5}
    request = Request(prompt="a cat", **{**SMALL, "num_inference_steps": 10}, **WINDOW, **ensemble)
    assert generator(request).deepcache == {"base": (1, 5), "refiner": (1, 5)}
    assert not leftovers(generator)


def test_a_branch_beyond_the_model_fails_naming_the_input(generator):
    branches = deepcache.branches(generator.pipelines.base["txt2img"].unet)
    with pytest.raises(ValueError, match=f"deepcache_branch: .* branches 0 to {branches - 1}"):
        pixels(generator, deepcache_interval=2, deepcache_branch=branches)
    assert not leftovers(generator)


def test_through_the_server(server):
    request = {"prompt": "a cat", **SMALL, "scheduler": "DDIM"}
    plain = server.predict(**request)
    cached = server.predict(**request, deepcache_interval=3, deepcache_branch=1)
    assert cached["status"] == "succeeded"
    assert "deepcache: 4 of 7 base UNet calls reused" in cached["logs"]
    assert cached["output"] != plain["output"]
    assert server.predict(**request)["output"] == plain["output"]
    response = server.post({**request, "deepcache_interval": 6})
    assert response.status_code == 422 and "deepcache_interval" in response.text
    windowed = server.predict(**{**request, "num_inference_steps": 10, **WINDOW})
    assert "deepcache: 3 of 10 base UNet calls reused" in windowed["logs"]
    response = server.post({**request, "deepcache_interval": 3, "deepcache_start": 1.5})
    assert response.status_code == 422 and "deepcache_start" in response.text
    branches = 9  # the tiny UNets have three down blocks (SD 1.5 has four: 12 branches)
    error = server.failure(**request, deepcache_interval=2, deepcache_branch=branches)
    assert error.startswith(f"deepcache_branch: this model's UNet has branches 0 to {branches - 1}")
