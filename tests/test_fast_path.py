"""The fast path keeps images within 2/255 of the plain path, costs no memory, keeps LoRAs
working, and leaves nothing behind."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdcog.common.families import PIPELINE_KINDS
from sdcog.generate import Generator
from sdcog.request.request import Request
from sdcog.serving.settings import Settings
from sdcog.speed import fast_path

TOLERANCE = 2  # mean abs difference, in 0-255 pixel values


def build(weights, chosen: str) -> Generator:
    return Generator(weights, Settings.from_env({**os.environ, "SDCOG_FAST_PATH": chosen}))


@pytest.fixture(scope="module", params=list(PIPELINE_KINDS))
def pair(request, make_weights) -> tuple[Path, Generator, Generator]:
    """The weights, and fast and plain generators over them."""
    weights = make_weights(request.param)
    return weights, build(weights, "channels_last,fused_qkv"), build(weights, "none")


def pixels(generator: Generator, **input) -> np.ndarray:
    request = Request(prompt="a cat", width=128, height=128, num_inference_steps=3, seed=5, **input)
    [path] = generator(request).paths
    return np.asarray(Image.open(path), dtype=np.float64)


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_fast_path_keeps_the_image(pair):
    _, fast, plain = pair
    assert fast_path.is_fused(fast.pipelines.base["txt2img"].unet)
    assert not fast_path.is_fused(plain.pipelines.base["txt2img"].unet)
    assert mean_diff(pixels(fast), pixels(plain)) <= TOLERANCE


def test_each_optimisation_keeps_the_image(make_weights):
    weights = make_weights("sd")
    plain = pixels(build(weights, "none"))
    for name in fast_path.FAST_PATH:
        assert mean_diff(pixels(build(weights, name)), plain) <= TOLERANCE, name


def unique_bytes(module: torch.nn.Module) -> int:
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes()
                for p in module.parameters()}  # fmt: skip
    return sum(storages.values())


def test_fused_projections_cost_no_memory(pair):
    _, fast, plain = pair
    fused = fast.pipelines.base["txt2img"].unet
    assert unique_bytes(fused) == unique_bytes(plain.pipelines.base["txt2img"].unet)
    attention = next(m for m in fused.modules() if hasattr(m, "to_qkv"))
    assert attention.to_q.weight.untyped_storage().data_ptr() == (
        attention.to_qkv.weight.untyped_storage().data_ptr()
    )


def test_loras_work_with_fused_attention_and_it_comes_back(pair, adapter_refs):
    weights, fast, plain = pair
    family = fast.pipelines.family.pipeline
    fused = build(weights, "fused_qkv")
    lora = {"lora_weights": (adapter_refs[family]["a"],), "lora_scales": (1.0,)}
    before = pixels(fused)
    with_lora = pixels(fused, **lora)
    # The LoRA's query/key/value layers count: merged into the separate projections, views of
    # the fused weights, they reach the fused attention too. Only fused_qkv here: the tiny model
    # under its strong random LoRA turns channels_last's 1e-6 rounding differences into visible
    # ones, which real weights do not.
    assert mean_diff(with_lora, pixels(plain, **lora)) <= 0.1
    assert mean_diff(with_lora, before) > 5 * TOLERANCE
    assert fast_path.is_fused(fused.pipelines.base["txt2img"].unet)
    assert np.array_equal(pixels(fused), before)
    # The full fast path after a LoRA request: as before it.
    fast_before = pixels(fast)
    pixels(fast, **lora)
    assert np.array_equal(pixels(fast), fast_before)


def test_unknown_fast_path_names_are_refused():
    with pytest.raises(ValueError, match="SDCOG_FAST_PATH: unknown \\['warp_drive'\\]"):
        Settings.from_env({"SDCOG_FAST_PATH": "channels_last,warp_drive"})
    assert Settings.from_env({"SDCOG_FAST_PATH": "none"}).fast_path == ()
    assert Settings.from_env({}).fast_path == fast_path.choose(None) == ("fused_qkv",)  # a CPU
