"""What only SDXL has: the refiner, the watermark, and SD 1.x builds refusing SDXL-only inputs."""

import io
import shutil

import numpy as np
import pytest
from diffusers.pipelines.stable_diffusion_xl.watermark import WATERMARK_BITS
from helpers import data_uri, decode_output, output_images
from imwatermark import WatermarkDecoder
from PIL import Image

from sdcog.generate import Generator
from sdcog.request.request import ControlSlot, Request

STEPS = {"num_inference_steps": 10, "seed": 21}


def watermark_bits_found(png: bytes) -> int:
    """How many of SDXL's 48 watermark bits decode from an image."""
    bgr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[:, :, ::-1].copy()
    found = WatermarkDecoder("bits", len(WATERMARK_BITS)).decode(bgr, "dwtDct")
    return sum(int(a) == int(b) for a, b in zip(found, WATERMARK_BITS, strict=True))


def only_output(result: dict) -> bytes:
    output_images(result)  # asserts success
    return decode_output(result["output"][0])


@pytest.mark.parametrize("refine", ["expert_ensemble_refiner", "base_image_refiner"])
def test_refiners_change_the_image(sdxl_server, refine):
    plain = only_output(sdxl_server.predict(prompt="a castle", **STEPS))
    result = sdxl_server.predict(prompt="a castle", refine=refine, **STEPS)
    assert f"refine: {refine}, " in result["logs"]  # the logs say the refiner ran
    refined = only_output(result)
    assert refined != plain
    assert Image.open(io.BytesIO(refined)).size == (1024, 1024)


def test_refiner_settings_matter(sdxl_server):
    def run(**settings) -> bytes:
        return only_output(sdxl_server.predict(prompt="a castle", **STEPS, **settings))

    ensemble = {"refine": "expert_ensemble_refiner"}
    assert run(**ensemble, high_noise_frac=0.5) != run(**ensemble, high_noise_frac=0.8)
    image_refiner = {"refine": "base_image_refiner"}
    assert run(**image_refiner, refine_steps=4) != run(**image_refiner, refine_steps=8)
    # The ensemble's refiner schedule too (Crynux's refiner.steps): its own step count.
    assert run(**ensemble, refine_steps=20) != run(**ensemble)
    assert run(**ensemble, refine_steps=STEPS["num_inference_steps"]) == run(**ensemble)


@pytest.mark.parametrize("refine", ["expert_ensemble_refiner", "base_image_refiner"])
def test_refiners_with_img2img_and_inpainting(sdxl_server, refine):
    image = data_uri(Image.new("RGB", (512, 512), (90, 40, 160)))
    mask = Image.new("L", (512, 512), 0)
    mask.paste(255, (0, 0, 256, 512))
    for extra in ({}, {"mask": data_uri(mask)}):
        result = sdxl_server.predict(prompt="x", image=image, refine=refine, **STEPS, **extra)
        assert output_images(result)[0].size == (1024, 1024)


def test_high_noise_frac_that_starves_a_model_is_a_clear_error(sdxl_server):
    result = sdxl_server.predict(
        prompt="x", refine="expert_ensemble_refiner", high_noise_frac=0.99, num_inference_steps=4
    )
    assert result["status"] == "failed"
    assert (
        "high_noise_frac: at 0.99, 4 DPMSolverMultistep steps leave the refiner no step"
        in (result["error"])
    )


def test_invalid_refine_is_422(sdxl_server):
    response = sdxl_server.post({"prompt": "x", "refine": "twice"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "input", "refine"]


def test_watermark_on_by_default_and_off_without_it(sdxl_server):
    marked = only_output(sdxl_server.predict(prompt="a harbour", **STEPS))
    unmarked = only_output(sdxl_server.predict(prompt="a harbour", apply_watermark=False, **STEPS))
    assert watermark_bits_found(marked) == 48
    assert watermark_bits_found(unmarked) < 40


def test_watermark_setting_never_leaks(sdxl_server):
    baseline = sdxl_server.predict(prompt="a harbour", **STEPS)["output"]
    assert sdxl_server.predict(prompt="a harbour", apply_watermark=False, **STEPS)["status"] == (
        "succeeded"
    )
    assert sdxl_server.predict(prompt="a harbour", **STEPS)["output"] == baseline
    broken = "data:image/png;base64,bm90IGFuIGltYWdl"
    failed = sdxl_server.predict(prompt="x", image=broken, apply_watermark=False, **STEPS)
    assert failed["status"] == "failed"
    assert sdxl_server.predict(prompt="a harbour", **STEPS)["output"] == baseline


@pytest.mark.parametrize(
    "sdxl_only",
    [
        {"refine": "expert_ensemble_refiner"},
        {"refine": "base_image_refiner"},
        {"high_noise_frac": 0.5},
        {"refine_steps": 3},
        {"apply_watermark": False},
    ],
)
def test_sd_build_rejects_sdxl_only_inputs(sd_server, sdxl_only):
    result = sd_server.predict(prompt="x", num_inference_steps=2, **sdxl_only)
    assert result["status"] == "failed"
    (name,) = sdxl_only
    assert f"{name}: only SDXL builds take this input" in result["error"]


def test_sd_build_accepts_sdxl_only_defaults(sd_server):
    defaults = {"refine": "no_refiner", "high_noise_frac": 0.8, "apply_watermark": True}
    output_images(sd_server.predict(prompt="x", num_inference_steps=2, **defaults))


@pytest.fixture(scope="module")
def sdxl_generator(sdxl_weights) -> Generator:
    return Generator(sdxl_weights)


def test_refiner_shares_the_vae_and_second_text_encoder(sdxl_generator):
    base = sdxl_generator.pipelines.base["txt2img"]
    refiners = sdxl_generator.pipelines.refiner
    for refiner in refiners.values():
        assert refiner.vae is base.vae
        assert refiner.text_encoder_2 is base.text_encoder_2
        assert refiner.text_encoder is None
    # Count the tensors actually in memory: the refiner adds its UNet and nothing else.
    modules = [base.unet, base.vae, base.text_encoder, base.text_encoder_2]
    for pipe in [*sdxl_generator.pipelines.base.values(), *refiners.values()]:
        modules += [pipe.unet, pipe.vae, pipe.text_encoder_2]
        modules += [pipe.text_encoder] if pipe.text_encoder is not None else []
    # (address, size): a fused QKV weight and its query view start at the same address.
    pointers = {(p.data_ptr(), p.numel()) for m in modules for p in m.parameters()}
    expected = sum(
        len(list(m.parameters()))
        for m in (
            base.unet,
            base.vae,
            base.text_encoder,
            base.text_encoder_2,
            refiners["img2img"].unet,
        )
    )
    assert len(pointers) == expected


def test_watermark_off_leaves_the_pipelines_pixels_untouched(sdxl_generator):
    from sdcog.request.seeds import generators

    request = Request(prompt="a bay", seed=4, num_inference_steps=3, apply_watermark=False)
    (path,) = sdxl_generator(request).paths
    pipe = sdxl_generator.pipelines.get("txt2img", request.scheduler)
    raw = pipe(  # no negative prompt: diffusers conditions on zeros, as this SDXL's config asks
        prompt=["a bay"],
        num_inference_steps=3,
        guidance_scale=request.guidance_scale,
        generator=generators([4]),
        width=1024,
        height=1024,
    ).images[0]
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(raw))


def test_refiner_less_sdxl_build_refuses_refine(sdxl_weights, tmp_path):
    shutil.copytree(sdxl_weights, tmp_path / "w", ignore=shutil.ignore_patterns("refiner"))
    generator = Generator(tmp_path / "w")
    assert generator.pipelines.refiner is None
    with pytest.raises(ValueError, match="refine: expert_ensemble_refiner needs a refiner"):
        generator(Request(prompt="x", refine="expert_ensemble_refiner", num_inference_steps=10))
    assert generator(Request(prompt="x", num_inference_steps=2, width=256, height=256))


def test_sdxl_uses_the_separately_pinned_vae(sdxl_generator, sdxl_weights):
    vae = sdxl_generator.pipelines.base["txt2img"].vae
    assert vae.config.scaling_factor == 0.13025
    assert not (sdxl_weights / "base/vae").exists()


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"refine": "expert_ensemble_refiner", "high_noise_frac": 0.99}, r"^high_noise_frac: "),
        ({"refine": "base_image_refiner", "deepcache_interval": 2, "deepcache_branch": 10},
         r"^deepcache_branch: "),
        ({"controlnets": "canny and tile"}, r"^controlnet_2: this build has no tile ControlNet"),
    ],
)  # fmt: skip
def test_sdxl_checks_run_before_any_download(
    sdxl_generator, adapter_refs, file_server, control_image, inputs, message
):
    lora = file_server.put(f"unfetched-xl/{abs(hash(message))}.safetensors",
                           adapter_refs["sdxl"]["a_bytes"])  # fmt: skip
    if inputs.get("controlnets"):  # this build's one ControlNet is the union one, without tile
        inputs = {"controlnets": (ControlSlot(1, "canny", control_image),
                                  ControlSlot(2, "tile", control_image))}  # fmt: skip
    request = Request(prompt="x", lora_weights=(lora,), lora_scales=(1.0,),
                      num_inference_steps=4, width=256, height=256, **inputs)  # fmt: skip
    with pytest.raises(ValueError, match=message):
        sdxl_generator(request)
    assert file_server.count(lora.rsplit("/", 1)[1]) == 0


@pytest.mark.parametrize("steps", [{"num_inference_steps": 3}, {"refine_steps": 2}])
def test_the_base_image_refiner_needs_one_step_at_its_strength(sdxl_generator, steps):
    """It reworks the base's image at strength 0.3: 3 steps of it are none (diffusers then
    failed inside the refiner: "cannot reshape tensor of 0 elements")."""
    request = Request(prompt="x", width=128, height=128, refine="base_image_refiner", **steps)
    with pytest.raises(ValueError, match=r"^refine_steps: base_image_refiner refines at strength "
                                         r"0.3, .* must be at least 1 \(got [23]\)$"):  # fmt: skip
        sdxl_generator(request)
