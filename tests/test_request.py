import re
from dataclasses import fields
from pathlib import Path

import pytest

from sdcog.common.limits import MAX_PROMPT_CHARS
from sdcog.request import request_checks
from sdcog.request.request import INPUT_NAMES, ControlSlot, Request


def checked(request: Request) -> Request:
    """The request through the rules it must pass on its own (the first of checks.py)."""
    request_checks.check(request)
    return request


def test_modes():
    assert Request(prompt="x").mode == "txt2img"
    assert Request(prompt="x", image=Path("i")).mode == "img2img"
    assert Request(prompt="x", image=Path("i"), mask=Path("m")).mode == "inpaint"


def test_mask_needs_an_image():
    with pytest.raises(ValueError, match="mask: a mask needs an image"):
        checked(Request(prompt="x", mask=Path("m")))


def test_image_needs_at_least_one_denoising_step():
    with pytest.raises(ValueError, match=r"prompt_strength: .* at least 1 \(got 0.01 x 50\)"):
        checked(Request(prompt="x", image=Path("i"), prompt_strength=0.01))
    checked(Request(prompt="x", image=Path("i"), prompt_strength=0.02))


def test_controlnet_slots_from_predict_inputs_by_name():
    inputs = {
        "prompt": "x",
        "controlnet_1": "none",
        "controlnet_2": "depth",
        "controlnet_2_image": Path("d.png"),
        "controlnet_2_conditioning_scale": 1,  # Cog hands a JSON 1 over as an int
        "controlnet_2_start": 0,
        "controlnet_2_end": 0.5,
        "controlnet_2_preprocess": False,
        "controlnet_2_model": None,
        "controlnet_3": "canny",
        "controlnet_3_image": Path("c.png"),
        "lora_weights": ["o/a"],
        "guidance_scale": 7,
    }
    request = Request.from_inputs(inputs, local_paths=True)
    depth, canny = request.controlnets
    assert (depth.number, depth.kind, depth.image, depth.end) == (2, "depth", Path("d.png"), 0.5)
    assert isinstance(depth.conditioning_scale, float) and isinstance(request.guidance_scale, float)
    assert depth.preprocess is False and depth.model is None
    assert (canny.number, canny.start, canny.end, canny.conditioning_scale) == (3, 0.0, 1.0, 1.0)
    assert request.lora_weights == ("o/a",)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"controlnet_1": "canny"}, "controlnet_1: canny needs an image"),
        ({"controlnet_3_model": "a/b"}, "controlnet_3_model: given without a control kind"),
        (
            {"controlnet_1": "canny", "controlnet_1_image": Path("i"), "controlnet_1_start": 0.7,
             "controlnet_1_end": 0.7},
            r"controlnet_1_start: must be below controlnet_1_end, both from 0 to 1 \(got 0.7",
        ),
        ({"controlnet_1": "pose", "controlnet_1_image": Path("i")}, "controlnet_1: 'pose' is not"),
        (
            {"controlnet_1": "canny", "controlnet_1_image": Path("i"), "image": Path("i"),
             "refine": "expert_ensemble_refiner"},
            "refine: expert_ensemble_refiner cannot hand over from a ControlNet image-to-image",
        ),
    ],
)  # fmt: skip
def test_controlnet_inputs_that_cannot_work_name_the_input(inputs, message):
    with pytest.raises(ValueError, match=message):
        checked(Request.from_inputs({"prompt": "x", **inputs}, local_paths=True))


def test_integral_floats_become_ints_and_others_are_refused_by_name():
    request = Request.from_inputs({"prompt": "x", "num_outputs": 2.0, "seed": 3.0, "width": 512.0})
    assert (request.num_outputs, request.seed, request.width) == (2, 3, 512)
    assert all(type(v) is int for v in (request.num_outputs, request.seed, request.width))
    with pytest.raises(ValueError, match=r"num_inference_steps: must be a whole number \(got 2.5"):
        Request.from_inputs({"prompt": "x", "num_inference_steps": 2.5})
    scales = Request.from_inputs(
        {"prompt": "x", "lora_weights": ["o/a", "o/b"], "lora_scales": [1, 2]}
    )
    assert scales.lora_scales == (1.0, 2.0)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"prompt": "x" * 20_001}, r"^prompt: 20001 characters; at most 20000"),
        ({"negative_prompt": "\u00e9" * 20_001}, r"^negative_prompt: 20001 characters; at most"),
        ({"lora_weights": [f"o/l{i}" for i in range(9)]}, r"^lora_weights: 9 entries; at most 8"),
        ({"textual_inversions": [f"<t{i}>=o/e" for i in range(17)]},
         r"^textual_inversions: 17 entries; at most 16"),
        ({"lora_weights": ["o/a", "http://127.0.0.1:8099\\@1.1.1.1/l.safetensors"]},
         r"^lora_weights: .* backslashes"),
        ({"textual_inversions": ["<t>=http://u@1.1.1.1/e.safetensors"]},
         r"^textual_inversions: .* user info"),
        ({"textual_inversions": ["<t>=just-a-name"]}, r"^textual_inversions: 'just-a-name' is "),
        ({"replicate_weights": "http://1.1.1.1/t.tar\n"}, r"^replicate_weights: .* control"),
        ({"lora_weights": ["https://x.example/l.ckpt"]}, r"^lora_weights: .* is pickled weights"),
        ({"width": 1001}, r"^width: 1001 is not a multiple of 8 .*; take 1000 or 1008$"),
        ({"height": 516}, r"^height: 516 is not a multiple of 8 .*; take 512 or 520$"),
        ({"controlnet_1": "canny", "controlnet_1_image": Path("i"),
          "controlnet_1_model": "ftp://x.example/c.safetensors"}, r"^controlnet_1_model: .* is "),
    ],
)  # fmt: skip
def test_bounds_and_reference_forms_are_checked_before_anything_is_fetched(inputs, message):
    with pytest.raises(ValueError, match=message):
        checked(Request.from_inputs({"prompt": "x", **inputs}, local_paths=True))


def test_the_prompt_limit_is_the_schemas():
    # predict.py's Input(max_length=...) is a literal for Cog's static parser.
    import predict

    assert predict.MAX_PROMPT_CHARS == MAX_PROMPT_CHARS
    checked(Request.from_inputs({"prompt": "x" * MAX_PROMPT_CHARS, "lora_weights": ["o/a"] * 8}))


def test_unknown_names_are_refused_with_the_closest_one():
    with pytest.raises(ValueError, match=r"^negative_promt: not an input \(did you mean "
                                         r"negative_prompt\?\)"):  # fmt: skip
        Request.from_inputs({"prompt": "x", "negative_promt": "blurry"})
    with pytest.raises(ValueError, match=r"^colour: not an input$"):
        Request.from_inputs({"prompt": "x", "colour": "red"})
    with pytest.raises(ValueError, match=r"^cfg_scale: not an input \(AUTOMATIC1111's name; "
                                         r"here it is guidance_scale\)$"):  # fmt: skip
        Request.from_inputs({"prompt": "x", "cfg_scale": 7})


def test_predict_inputs_are_the_request_and_their_defaults_its_own():
    # One source of defaults: what predict() offers is what Request does without it.
    import inspect

    import predict

    parameters = inspect.signature(predict.Predictor.predict).parameters
    offered = {name: p.default.default for name, p in parameters.items() if name != "self"}
    assert set(offered) == INPUT_NAMES
    request, slot = Request(prompt="x"), {f.name: f.default for f in fields(ControlSlot)}
    for name, default in offered.items():
        if name == "prompt":
            continue
        if match := re.fullmatch(r"controlnet_\d", name):
            assert default == "none", name  # no slot
            continue
        if match := re.fullmatch(r"controlnet_\d_(\w+)", name):
            expected = slot[match[1]] if match[1] != "image" else None
        else:
            expected = getattr(request, name)
        if isinstance(expected, tuple):
            expected = list(expected)
        assert default == expected, name


@pytest.mark.parametrize("given", [{"ip_adapter": "plus"}, {"ip_adapter_scale": 1.0}])
def test_ip_adapter_settings_without_its_image_are_refused(given):
    (name,) = given
    with pytest.raises(ValueError, match=rf"^{name}: the IP-Adapter steers with ip_adapter_image"):
        checked(Request(prompt="x", **given))


def test_control_maps_need_a_controlnet():
    with pytest.raises(ValueError, match=r"^return_control_maps: no ControlNet in this request"):
        checked(Request.from_inputs({"prompt": "x", "return_control_maps": True}))


def test_fofrs_controlnet_names_are_aliases_and_none_ignores_its_image(capsys):
    """replicate's fofr/*-multi-controlnet-lora models: their kind names, and an image left in
    a slot set to none is ignored (logged), as there."""
    request = Request.from_inputs(
        {"prompt": "x", "controlnet_1": "edge_canny", "controlnet_1_image": Path("a"),
         "controlnet_2": "soft_edge_pidi", "controlnet_2_image": Path("b"),
         "controlnet_3": "none", "controlnet_3_image": Path("c")}, local_paths=True,
    )  # fmt: skip
    assert [slot.kind for slot in request.controlnets] == ["canny", "softedge"]
    assert "controlnet_3_image: ignored, controlnet_3 is none" in capsys.readouterr().out


@pytest.mark.parametrize(
    "given",
    [{"deepcache_branch": 2}, {"deepcache_start": 0.2}, {"deepcache_end": 0.8}],
)
def test_deepcache_settings_without_deepcache_are_refused(given):
    (name,) = given
    with pytest.raises(ValueError, match=rf"^{name}: DeepCache is off \(deepcache_interval 1\)"):
        checked(Request(prompt="x", **given))
    checked(Request(prompt="x", deepcache_interval=3, **given))  # with it, fine


@pytest.mark.parametrize("start, end", [(0.5, 0.5), (0.8, 0.2)])
def test_a_deepcache_window_must_not_be_empty(start, end):
    with pytest.raises(ValueError, match=r"^deepcache_end: must be above deepcache_start"):
        checked(Request(prompt="x", deepcache_interval=3, deepcache_start=start, deepcache_end=end))


def test_a_replicate_fine_tunes_tar_in_lora_weights_points_to_replicate_weights():
    """replicate/cog-sdxl's and fofr's lora_weights take the .tar Replicate's trainer writes;
    here that is replicate_weights, and the refusal says so before anything is fetched."""
    tar = "https://replicate.delivery/pbxt/abc/trained_model.tar"
    with pytest.raises(ValueError, match=r"^lora_weights: .*trained_model.tar is a Replicate "
                       r"fine-tune's \.tar; give it as replicate_weights"):  # fmt: skip
        checked(Request(prompt="x", lora_weights=(tar,)))
    assert Request(prompt="x", replicate_weights=tar).replicate_weights == tar
