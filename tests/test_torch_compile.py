"""SDCOG_COMPILE: compiled at setup and warmed up at the native size; images within tolerance
of the eager model; requests that patch the UNet run it eagerly and leave it compiled."""

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from sdcog import torch_compile
from sdcog.generate import Generator
from sdcog.request import Request
from sdcog.settings import Settings

pytestmark = pytest.mark.slow

SMALL = {"width": 128, "height": 128, "num_inference_steps": 3, "seed": 8}


@pytest.fixture(scope="module")
def compiled(make_weights, tmp_path_factory) -> Generator:
    settings = replace(Settings.from_env(), compile_mode="default")
    with pytest.MonkeyPatch.context() as patch:  # torch's own setting, read by torch
        patch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("inductor")))
        return Generator(make_weights("sd"), settings)


def pixels(generator: Generator, **input) -> np.ndarray:
    [path] = generator(Request(prompt="a cat", **{**SMALL, **input})).paths
    return np.asarray(Image.open(path), dtype=np.float64)


def test_compiled_at_setup_and_close_to_eager(compiled, make_weights):
    unet = compiled.pipelines.base["txt2img"].unet
    assert unet._compiled_call_impl is not None
    eager = Generator(make_weights("sd"))
    assert np.abs(pixels(compiled) - pixels(eager)).mean() <= 2


def test_patched_requests_run_eagerly_and_leave_it_compiled(compiled, adapter_refs):
    plain = pixels(compiled)
    lora = {"lora_weights": (adapter_refs["sd"]["a"],), "lora_scales": (1.0,)}
    assert not np.array_equal(pixels(compiled, **lora), plain)
    assert not np.array_equal(pixels(compiled, deepcache_interval=2), plain)
    assert np.array_equal(pixels(compiled), plain)


def test_modes():
    for value, expected in (("", None), ("0", None), ("1", "default"),
                            ("reduce-overhead", "reduce-overhead")):  # fmt: skip
        assert Settings.from_env({"SDCOG_COMPILE": value}).compile_mode == expected
    assert torch_compile.mode(None) is None
