"""IP-Adapter: per request through Cog's server, against diffusers' own loader in-process, and
free for requests without it."""

import copy
import shutil

import numpy as np
import pytest
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from helpers import data_uri, output_images
from PIL import Image

from sdcog.common.families import PIPELINE_KINDS
from sdcog.generate import Generator
from sdcog.request.request import Request
from sdcog.request.seeds import generators

SMALL = {"prompt": "a portrait", "width": 128, "height": 128, "num_inference_steps": 3, "seed": 9}


def reference_image() -> Image.Image:
    rng = np.random.default_rng(4)
    return Image.fromarray((rng.random((96, 96, 3)) * 255).astype(np.uint8))


def test_each_kind_changes_the_image_for_its_request_only(server):
    before = server.predict(**SMALL)["output"]
    outputs = {}
    for kind in ("standard", "plus", "plus_face"):
        request = {**SMALL, "ip_adapter_image": data_uri(reference_image()), "ip_adapter": kind}
        result = server.predict(**request)
        output_images(result)
        assert f"ip_adapter: {kind} at scale 0.6" in result["logs"]  # as LoRAs and ControlNets
        assert result["output"] == server.predict(**request)["output"]  # reproducible
        outputs[kind] = result["output"]
    assert len({tuple(o) for o in [before, *outputs.values()]}) == 4
    stronger = server.predict(**SMALL, ip_adapter_image=data_uri(reference_image()),
                              ip_adapter_scale=1.5)["output"]  # fmt: skip
    assert stronger != outputs["standard"]
    assert server.predict(**SMALL)["output"] == before  # nothing left behind


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def family_weights(request, make_weights):
    return request.param, make_weights(request.param)


def test_matches_diffusers_own_ip_adapter_pipeline(family_weights, tmp_path):
    family, weights = family_weights
    reference_image().save(tmp_path / "ref.png")
    generator = Generator(weights)
    request = Request(**{**SMALL, "width": 256, "height": 256}, apply_watermark=family != "sdxl",
                      ip_adapter_image=tmp_path / "ref.png", ip_adapter="plus")  # fmt: skip
    ours = np.asarray(Image.open(generator(request).paths[0]), dtype=np.float64)

    pipeline = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    extra = {"feature_extractor": None, "image_encoder": None}  # load_ip_adapter makes them
    if family == "sd":
        extra |= {"safety_checker": None, "requires_safety_checker": False}
    else:
        extra["vae"] = generator.pipelines.base["txt2img"].vae  # the separately pinned VAE
        extra["add_watermarker"] = False  # as ours with apply_watermark=False
    pipe = pipeline.from_pretrained(weights / "base", **extra)
    subfolder, name = PIPELINE_KINDS[family].ip_adapters["plus"].split("/")
    # SDXL's _vit-h adapters take SD 1.5's encoder, in models/.
    encoder = "models/image_encoder" if family == "sdxl" else "image_encoder"
    pipe.load_ip_adapter(weights / "ip_adapter", subfolder=subfolder, weight_name=name,
                         image_encoder_folder=encoder)  # fmt: skip
    pipe.set_ip_adapter_scale(request.ip_adapter_scale)
    pipe.scheduler = copy.deepcopy(generator.pipelines.get("txt2img", request.scheduler).scheduler)
    theirs = pipe(
        "a portrait", negative_prompt=None if family == "sdxl" else "", width=256, height=256,
        num_inference_steps=3, guidance_scale=request.guidance_scale, generator=generators([9]),
        ip_adapter_image=reference_image(),
    ).images[0]  # fmt: skip
    difference = np.abs(ours - np.asarray(theirs, dtype=np.float64)).mean()
    assert difference <= 2, difference


def test_off_is_bit_identical_to_a_build_without_ip_adapter_pins(family_weights, tmp_path):
    family, weights = family_weights
    without = tmp_path / "without"
    shutil.copytree(weights, without, ignore=shutil.ignore_patterns("ip_adapter"))
    request = Request(**SMALL)
    plain = Generator(without)
    assert plain.ip_adapters.adapters == {}
    expected = plain(request).paths[0].read_bytes()
    with_pins = Generator(weights)
    assert with_pins(request).paths[0].read_bytes() == expected
    reference_image().save(tmp_path / "ref.png")
    with_pins(Request(**SMALL, ip_adapter_image=tmp_path / "ref.png"))
    assert with_pins(request).paths[0].read_bytes() == expected
    with pytest.raises(ValueError, match="^ip_adapter_image: this build has no IP-Adapter"):
        plain(Request(**SMALL, ip_adapter_image=tmp_path / "ref.png"))


def test_a_kind_that_is_not_pinned_names_the_input(tiny_weights, tmp_path):
    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights,
                    ignore=shutil.ignore_patterns("ip-adapter-plus*"))  # fmt: skip
    reference_image().save(tmp_path / "ref.png")
    generator = Generator(weights)
    assert set(generator.ip_adapters.adapters) == {"standard"}
    request = Request(**SMALL, ip_adapter_image=tmp_path / "ref.png", ip_adapter="plus_face")
    with pytest.raises(ValueError, match=r"^ip_adapter: plus_face is not pinned in this build "
                                         r"\(pinned: standard"):  # fmt: skip
        generator(request)
    assert generator(Request(**SMALL, ip_adapter_image=tmp_path / "ref.png"))


def test_with_controlnet_lora_hires_and_every_mode(server, adapter_refs):
    ip = {"ip_adapter_image": data_uri(reference_image()), "ip_adapter": "plus"}
    photo = data_uri(reference_image().resize((128, 128)))
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (32, 32, 96, 96))
    cases = [
        {"image": photo, "prompt_strength": 0.7},
        {"image": photo, "mask": data_uri(mask)},
        {"controlnet_1": "canny", "controlnet_1_image": photo,
         "lora_weights": [adapter_refs[server.family]["a"]]},
        {"hires_scale": 2, "width": 256, "height": 256},
    ]  # fmt: skip
    for case in cases:
        plain = server.predict(**{**SMALL, **case})
        steered = server.predict(**{**SMALL, **case, **ip})
        output_images(steered)
        assert steered["output"] != plain["output"], case
