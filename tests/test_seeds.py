import re

import pytest
import torch

from sdcog.request.seeds import (
    MAX_SEED,
    SEED_DEVICES,
    check_device,
    generators,
    output_seeds,
    resolve_seed,
)


def test_given_seed_is_kept():
    assert resolve_seed(0) == 0
    assert resolve_seed(MAX_SEED) == MAX_SEED


def test_random_seeds_span_32_bits():
    seeds = {resolve_seed(None) for _ in range(200)}
    assert len(seeds) == 200
    assert all(0 <= s <= MAX_SEED for s in seeds)
    assert max(seeds) > 65535  # not limited to 16 bits like some packages


def test_output_i_uses_seed_plus_i():
    assert output_seeds(10, 3) == [10, 11, 12]


def test_generators_are_cpu_and_match_a_lone_generator():
    batch = generators([5, 6])
    assert all(g.device.type == "cpu" for g in batch)
    alone = generators([6])[0]
    assert torch.equal(torch.randn(4, generator=batch[1]), torch.randn(4, generator=alone))


def test_seed_devices_are_the_schemas():
    import predict

    assert tuple(predict.SEED_DEVICES) == SEED_DEVICES


@pytest.mark.skipif(torch.cuda.is_available(), reason="a server with CUDA takes seed_device=cuda")
def test_cuda_noise_is_refused_without_cuda_naming_the_input(tiny_weights):
    from sdcog.generate import Generator
    from sdcog.request.request import Request

    check_device("cpu")
    with pytest.raises(ValueError, match=r"^seed_device: cuda draws the noise a CUDA generator"):
        check_device("cuda")
    with pytest.raises(ValueError, match=r"^seed_device: "):
        Generator(tiny_weights)(Request(prompt="x", num_inference_steps=2, seed_device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's generator needs a CUDA device")
def test_cuda_noise_is_what_diffusers_code_seeding_cuda_gets(tiny_weights):
    """The same image as diffusers' pipeline with torch.Generator("cuda").manual_seed(seed)."""
    import numpy as np
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from PIL import Image

    from sdcog.generate import Generator
    from sdcog.request.request import Request

    request = Request(prompt="a lighthouse", num_inference_steps=4, width=256, height=256,
                      seed=42, seed_device="cuda", scheduler="DDIM",
                      prompt_weighting="none", disable_safety_checker=True)  # fmt: skip
    ours = np.asarray(Image.open(Generator(tiny_weights)(request).paths[0]), dtype=int)
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_weights / "base", safety_checker=None, torch_dtype=torch.float16
    ).to("cuda")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    image = pipe("a lighthouse", num_inference_steps=4, width=256, height=256,
                 generator=torch.Generator("cuda").manual_seed(42)).images[0]  # fmt: skip
    assert np.abs(ours - np.asarray(image, dtype=int)).mean() < 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="a server with CUDA takes seed_device=cuda")
def test_seed_device_through_cogs_server(sd_server):
    small = {"prompt": "x", "num_inference_steps": 2, "width": 128, "height": 128}
    assert "seed_device: cuda draws" in sd_server.failure(**small, seed_device="cuda")
    assert sd_server.post(small | {"seed_device": "tpu"}).status_code == 422
    assert sd_server.predict(**small, seed_device="cpu")["status"] == "succeeded"


def test_minus_one_is_a_random_seed_as_in_automatic1111():
    drawn = {resolve_seed(-1) for _ in range(50)}
    assert len(drawn) == 50 and all(0 <= s <= MAX_SEED for s in drawn)


def test_minus_one_through_cogs_server(sd_server):
    small = {"prompt": "x", "num_inference_steps": 2, "width": 128, "height": 128}
    seeds = [int(re.search(r"^output 0: seed (\d+)$", sd_server.predict(**small, seed=-1)["logs"],
                           re.M)[1]) for _ in range(2)]  # fmt: skip
    assert seeds[0] != seeds[1] and all(0 <= s <= MAX_SEED for s in seeds)
    assert sd_server.post(small | {"seed": -2}).status_code == 422
