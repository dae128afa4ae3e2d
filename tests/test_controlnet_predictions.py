"""ControlNet end to end through Cog's real server on tiny weights, for both families: every
kind, scales and windows, three at once, with LoRAs and embeddings, every mode and scheduler, the
refiner, models by URL and repository, and bad input."""

import json
import time

import numpy as np
import pytest
from helpers import data_uri, output_images, shapes
from loopback import DEAD_PROXY
from PIL import Image

from predict import CONTROLNETS, SCHEDULERS
from sdcog.adapters import annotators
from sdcog.common import protocol
from sdcog.request.control_slots import CONTROL_KINDS, KIND_ALIASES
from sdcog.request.images import output_size

SMALL = {"prompt": "a lighthouse by the sea", "num_inference_steps": 3, "width": 256,
         "height": 256, "seed": 5}  # fmt: skip
PHOTO = data_uri(shapes((256, 256)))


def run(server, **input) -> list[str]:
    """The outputs (data URIs) of a prediction that must succeed."""
    result = server.predict(**{**SMALL, **input})
    output_images(result)
    return result["output"]


def pixels(server, **input) -> np.ndarray:
    return np.asarray(output_images(server.predict(**{**SMALL, **input}))[0], dtype=np.float64)


def fail(server, **input) -> str:
    return server.failure(**{**SMALL, **input})


def canny(number: int = 1, **settings) -> dict:
    """Slot `number` as canny over PHOTO, plus controlnet_N_<setting> for each setting."""
    slot = f"controlnet_{number}"
    settings = {f"{slot}_{key}": value for key, value in settings.items()}
    return {slot: "canny", f"{slot}_image": PHOTO, **settings}


FIRST_BASELINE: dict[str, list[str]] = {}


@pytest.fixture
def baseline(server):
    """The plain output, the same as this server's first one: nothing may be left behind."""
    output = run(server)
    assert FIRST_BASELINE.setdefault(server.family, output) == output
    return output


def test_schema_offers_every_kind():
    assert CONTROLNETS == ["none", *CONTROL_KINDS, *KIND_ALIASES]


def test_fofrs_names_give_our_kinds_images(server):
    """fofr's multi-ControlNet payloads: edge_canny is canny; an image under none is ignored."""
    fofr = {"controlnet_1": "edge_canny", "controlnet_1_image": PHOTO,
            "controlnet_2": "none", "controlnet_2_image": PHOTO}  # fmt: skip
    result = server.predict(**SMALL, **fofr)
    assert result["output"] == run(server, **canny())
    assert "controlnet_2_image: ignored, controlnet_2 is none" in result["logs"]


@pytest.mark.parametrize("kind", CONTROL_KINDS)
def test_each_kind_changes_the_image(server, baseline, kind):
    request = {"controlnet_1": kind, "controlnet_1_image": PHOTO}
    if server.family == "sdxl" and kind == "tile":  # the union model has no tile mode
        assert "controlnet_1: this build has no tile ControlNet; pin [controlnet_tile]" in (
            fail(server, **request)
        )
    else:
        assert run(server, **request) != baseline
    assert run(server) == baseline


def test_scale_zero_gives_the_plain_image(server, baseline):
    plain = pixels(server)
    assert np.abs(pixels(server, **canny(conditioning_scale=0)) - plain).mean() <= 0.5
    assert np.abs(pixels(server, **canny(conditioning_scale=0.5)) - plain).mean() > 0.5


def test_start_and_end_change_the_image(server):
    outputs = [
        run(server, **canny()),
        run(server, **canny(start=0.5)),
        run(server, **canny(end=0.5)),
        run(server, **canny(start=0.2, end=0.6)),
    ]
    assert len(set(map(tuple, outputs))) == 4


def test_three_at_once(server):
    two = {**canny(1), "controlnet_2": "depth", "controlnet_2_image": PHOTO,
           "controlnet_2_end": 0.5}  # fmt: skip
    three = {**two, "controlnet_3": "openpose_face", "controlnet_3_image": PHOTO,
             "controlnet_3_conditioning_scale": 0.7}  # fmt: skip
    result = run(server, **three)
    assert result not in (run(server, **canny(1)), run(server, **two))
    assert run(server, **three) == result


def test_with_a_lora_an_embedding_and_weighting(server, adapter_refs):
    refs = adapter_refs[server.family]
    control = run(server, **canny())
    lora = run(server, lora_weights=[refs["a"]])
    both = run(server, lora_weights=[refs["a"]], **canny())
    assert both not in (control, lora)
    weighted = run(server, prompt="a (lighthouse)1.5 <tok> by the sea", **canny(),
                   textual_inversions=[f"<tok>={refs['embedding']}"])  # fmt: skip
    assert weighted != control


def test_img2img_inpainting_and_num_outputs(server):
    image = {"image": PHOTO, "prompt_strength": 0.7}
    mask = Image.new("L", (256, 256), 0)
    mask.paste(255, (64, 64, 192, 192))
    for mode in (image, {**image, "mask": data_uri(mask)}):
        assert run(server, **mode, **canny()) != run(server, **mode)
    result = server.predict(**SMALL, **canny(), num_outputs=2)
    assert len(output_images(result)) == 2
    assert "output 1: seed 6" in result["logs"]


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler(server, scheduler):
    (image,) = output_images(
        server.predict(**{**SMALL, "width": 128, "height": 128}, scheduler=scheduler, **canny())
    )
    assert image.size == (128, 128)


def test_control_maps_are_returned_after_the_images(server):
    """return_control_maps: each slot's map (annotated, or as given), at the output size, after
    the images, and named in the logs."""
    given = Image.new("RGB", (256, 256))
    given.paste((255, 255, 255), (96, 96, 160, 160))
    request = {**canny(1), "controlnet_2": "depth", "controlnet_2_image": data_uri(given),
               "controlnet_2_preprocess": False, "return_control_maps": True}  # fmt: skip
    result = server.predict(**SMALL, **request, num_outputs=2)
    images = output_images(result)
    assert len(images) == 4 and protocol.control_maps(result["logs"]) == [
        ("controlnet_1", "canny"), ("controlnet_2", "depth"),
    ]  # fmt: skip
    edges = annotators.canny(shapes((256, 256)))
    assert images[2].format == "PNG" and images[2].convert("RGB").tobytes() == edges.tobytes()
    assert images[3].convert("RGB").tobytes() == given.tobytes()
    # The images are those of the same request without the maps.
    del request["return_control_maps"]
    plain = server.predict(**SMALL, **request, num_outputs=2)["output"]
    assert protocol.final_outputs(result) == plain


def test_output_takes_the_control_images_aspect(server):
    wide = shapes((300, 200))
    request = {**SMALL, **canny(), "controlnet_1_image": data_uri(wide)}
    del request["width"], request["height"]
    (image,) = output_images(server.predict(**request))
    assert image.size == output_size(None, None, server.native, wide)
    assert image.width > image.height


def test_refiner_conditions_on_the_base_only(sdxl_server):
    steps = {"num_inference_steps": 10}
    for refine in ("expert_ensemble_refiner", "base_image_refiner"):
        plain = run(sdxl_server, refine=refine, **steps)
        assert run(sdxl_server, refine=refine, **steps, **canny()) != plain
    assert run(sdxl_server, refine="base_image_refiner", image=PHOTO, **steps, **canny())
    error = fail(sdxl_server, refine="expert_ensemble_refiner", image=PHOTO, **steps, **canny())
    assert "refine: expert_ensemble_refiner cannot hand over from a ControlNet" in error


@pytest.fixture(scope="session")
def served_controlnets(make_weights, file_server):
    """family -> the pinned canny-serving ControlNet, served by URL and as owner/repo."""
    refs = {}
    for family, entry, weights in (
        ("sd", "controlnet_canny", "diffusion_pytorch_model.fp16.safetensors"),
        ("sdxl", "controlnet_union", "diffusion_pytorch_model.safetensors"),
    ):
        folder = make_weights(family) / entry
        config = (folder / "config.json").read_bytes()
        url = file_server.put(f"cn-{family}/diffusion_pytorch_model.safetensors",
                              (folder / weights).read_bytes())  # fmt: skip
        file_server.put(f"cn-{family}/config.json", config)
        repo = f"tester/controlnet-{family}"
        file_server.put(f"api/models/{repo}", json.dumps(
            {"siblings": [{"rfilename": "config.json"}, {"rfilename": weights}]}
        ).encode())  # fmt: skip
        file_server.put(f"{repo}/resolve/main/config.json", config)
        file_server.put(f"{repo}/resolve/main/{weights}", (folder / weights).read_bytes())
        refs[family] = {"url": url, "repo": repo}
    # A diffusers model that is not a ControlNet: the tiny UNet.
    unet = make_weights("sd") / "base/unet"
    refs["unet"] = file_server.put(
        "unet/diffusion_pytorch_model.safetensors",
        (unet / "diffusion_pytorch_model.safetensors").read_bytes(),
    )
    file_server.put("unet/config.json", (unet / "config.json").read_bytes())
    return refs


def test_model_by_url_and_by_repository(server, served_controlnets):
    refs = served_controlnets[server.family]
    pinned = run(server, **canny())
    assert run(server, **canny(model=refs["url"])) == pinned  # the same weights, fetched
    assert run(server, **canny(model=refs["repo"])) == pinned
    second = server.predict(**SMALL, **canny(model=refs["url"]))
    assert "from the cache" in second["logs"]


def test_a_model_that_does_not_fit_fails_by_name(server, served_controlnets, baseline):
    other = served_controlnets["sdxl" if server.family == "sd" else "sd"]["url"]
    error = fail(server, **canny(2, model=other))
    assert "controlnet_2_model:" in error and "another model family" in error
    error = fail(server, **canny(model=served_controlnets["unet"]))
    assert "controlnet_1_model:" in error and "not a ControlNet" in error
    assert run(server) == baseline


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"controlnet_1": "canny"}, "controlnet_1: canny needs an image; give controlnet_1_image"),
        (canny(start=0.6, end=0.4), "controlnet_1_start: must be below controlnet_1_end"),
        (canny(start=0.5, end=0.5), "controlnet_1_start: must be below controlnet_1_end"),
        ({**canny(), "controlnet_1_image": "data:image/png;base64," + "QUJD"},
         "controlnet_1_image: could not be read as an image"),
        (canny(3, model="not a reference"), "controlnet_3_model:"),
    ],
)  # fmt: skip
def test_bad_input_fails_by_name_and_the_next_prediction_is_unaffected(
    server, baseline, request_, message
):
    assert message in fail(server, **request_)
    assert run(server) == baseline


def test_out_of_range_values_are_rejected_by_the_schema(server):
    for field, value in (("controlnet_1_conditioning_scale", 5), ("controlnet_1_end", 1.5),
                         ("controlnet_1", "pose")):  # fmt: skip
        response = server.post({**SMALL, **canny(), field: value})
        assert response.status_code == 422, response.text
        assert field in response.text


@pytest.mark.slow
def test_nothing_phones_home(sd_server):
    """Every server under test has the dead proxy as its HTTPS proxy: a plain request and an
    openpose one (DWPose through onnxruntime, whose telemetry once tried to CONNECT to
    mobile.events.data.microsoft.com about 9 s after a session opened) reach it not once,
    during or for 25 s after."""
    before = len(DEAD_PROXY.requests)
    run(sd_server)
    run(sd_server, controlnet_1="openpose", controlnet_1_image=PHOTO)
    time.sleep(25)
    assert DEAD_PROXY.requests[before:] == []
