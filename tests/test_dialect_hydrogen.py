"""Hydrogen Network (Crynux) task JSON: its schema, its translation, and its documented example
run through Cog's real server by script/task's engine."""

import base64
import io
import json

import pytest
from helpers import cli_predict, data_uri, hydrogen_example, shapes
from PIL import Image, ImageFilter

from sdcog.adapters import annotators
from sdcog.common.pins import PIN_FILE
from sdcog.dialects import ModelNames, hydrogen
from sdcog.dialects.tasks import run

SD = ModelNames.from_pins(PIN_FILE)
SDXL = ModelNames.from_pins(PIN_FILE.with_name("pins-sdxl.toml"))
BARE_PNG = data_uri(shapes()).split(",", 1)[1]  # Crynux's image_dataurl may be bare base64


def test_the_documented_example_runs_unchanged(server, file_server, adapter_refs, control_image,
                                               tmp_path):  # fmt: skip
    if server.family != "sd":
        pytest.skip("the example is an SD 1.5 fine-tune's task")
    # A build of that fine-tune: weights/pins.toml with chilloutmix as [base]
    # (docs/other-systems.md's example), over the tiny SD weights; civitai.com is served by the
    # test's mirror.
    pins = tmp_path / "pins.toml"
    pins.write_text(PIN_FILE.read_text().replace(
        '[base]\nrepo = "stable-diffusion-v1-5/stable-diffusion-v1-5"',
        '[base]\nrepo = "emilianJR/chilloutmix_NiPrunedFp32Fix"', 1))  # fmt: skip
    file_server.put("api/download/models/34562", adapter_refs["sd"]["a_bytes"])
    task = hydrogen_example(control_image.read_bytes())
    names = ModelNames.from_pins(pins)
    answer = run(cli_predict(server), "hydrogen", task, names, tmp_path / "out")
    paths = answer.splitlines()
    assert len(paths) == 9
    assert all(Image.open(p).size == (512, 512) for p in paths)
    assert file_server.count("/api/download/models/34562") >= 1
    # The stock SD 1.5 build fetches it for the task (test_base_model_predictions runs it).
    assert hydrogen.inputs(task, SD)["base_model"] == "emilianJR/chilloutmix_NiPrunedFp32Fix"


def test_translation_and_defaults():
    task = {"version": "1.0.0", "base_model": "runwayml/stable-diffusion-v1-5", "prompt": "a cat",
            "task_config": {"cfg": 7, "image_width": 640}, "lora": {
                "model": "o/r", "weight_file_name": "x.safetensors", "weight": 50},
            "scheduler": {"method": "DPMSolverMultistep", "args": {"use_karras_sigmas": True}},
            "textual_inversion": "o/ti"}  # fmt: skip
    assert hydrogen.inputs(task, SD) == {
        "prompt": "a cat", "negative_prompt": "", "width": 640, "height": 512,
        "num_inference_steps": 25, "seed": 0, "num_outputs": 6, "disable_safety_checker": False,
        "guidance_scale": 7, "prompt_weighting": "compel", "scheduler": "KarrasDPM",
        "lora_weights": ["https://huggingface.co/o/r/resolve/main/x.safetensors"],
        "lora_scales": [0.5], "textual_inversions": ["o/ti"],
    }  # fmt: skip


def test_sdxl_refiner_and_vae_map_to_the_build():
    task = {"base_model": {"name": "stabilityai/stable-diffusion-xl-base-1.0"}, "prompt": "x",
            "task_config": {}, "vae": "madebyollin/sdxl-vae-fp16-fix",
            "refiner": {"model": "stabilityai/stable-diffusion-xl-refiner-1.0",
                        "denoising_cutoff": 70}}  # fmt: skip
    inputs = hydrogen.inputs(task, SDXL)
    assert inputs["refine"] == "expert_ensemble_refiner" and inputs["high_noise_frac"] == 0.7
    assert inputs["refine_steps"] == 20  # the format's default refiner.steps
    assert "base_model" not in inputs and "vae" not in inputs  # the build's own: no fetch
    other = hydrogen.inputs({**task, "vae": "other/vae", "base_model": "https://x.org/m.safetensors"},
                            SDXL)  # fmt: skip
    assert (other["base_model"], other["vae"]) == ("https://x.org/m.safetensors", "other/vae")


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"task_config": {"num_images": 11}}, "hydrogen: task_config.num_images: 11 is greater"),
        ({"task_config": {"image_width": 500}}, "task_config.image_width: 500 is not a multiple"),
        ({"prompt": ""}, "hydrogen: prompt: '' should be non-empty"),
        ({"colour": "red"}, "hydrogen: colour: Additional properties"),
        (
            {"scheduler": {"method": "PNDMScheduler"}},
            "hydrogen: scheduler.method: PNDMScheduler is not served here",
        ),
        (
            {
                "controlnet": {
                    "model": "x/y",
                    "image_dataurl": "AAAA",
                    "preprocess": {"method": "mlsd"},
                }
            },
            "controlnet.preprocess.method: mlsd is not served",
        ),  # fmt: skip
        (
            {"controlnet": {"model": "x/mystery", "image_dataurl": "AAAA"}},
            "controlnet.model: cannot tell which kind of control x/mystery is",
        ),
        ({"refiner": {"model": "a/b"}}, "hydrogen: refiner.model: a/b is not this build's"),
        ({"unet": "a/unet"}, "hydrogen: unet: a/unet: a separate UNet is not served here"),
    ],
)
def test_what_cannot_be_honoured_fails_naming_the_field(change, error):
    task = {"base_model": "runwayml/stable-diffusion-v1-5", "prompt": "a cat", "task_config": {}}
    with pytest.raises(ValueError) as raised:
        hydrogen.inputs({**task, **change}, SD)
    assert error in str(raised.value)


def test_a_control_map_without_preprocessing_takes_the_models_kind():
    task = {"base_model": "runwayml/stable-diffusion-v1-5", "prompt": "a cat", "task_config": {},
            "controlnet": {"model": "lllyasviel/control_v11f1p_sd15_depth",
                           "image_dataurl": BARE_PNG}}  # fmt: skip
    inputs = hydrogen.inputs(task, SD)
    assert inputs["controlnet_1"] == "depth" and inputs["controlnet_1_preprocess"] is False
    assert inputs["controlnet_1_image"] == f"data:image/png;base64,{BARE_PNG}"
    assert inputs["controlnet_1_conditioning_scale"] == 0.7  # the format's default weight
    assert "controlnet_1_model" not in inputs  # the build's own depth ControlNet
    other = {**task["controlnet"], "model": "someone/depth-controlnet"}
    assert (
        hydrogen.inputs({**task, "controlnet": other}, SD)["controlnet_1_model"] == other["model"]
    )


def test_the_schema_is_a_valid_json_schema():
    import jsonschema

    from sdcog.dialects import HERE

    jsonschema.Draft202012Validator.check_schema(json.loads((HERE / "hydrogen.schema.json")
                                                            .read_text()))  # fmt: skip


def test_script_task_checks_before_starting_a_server_and_runs_on_a_given_one(
    server, tmp_path, capsys
):
    from sdcog.tools.task import main

    if server.family != "sd":
        pytest.skip("an SD 1.5 task")
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"base_model": "no model", "prompt": "x", "task_config": {}}))
    with pytest.raises(SystemExit):
        main(["--dialect", "hydrogen", str(task), "--weights", str(tmp_path / "none")])
    assert capsys.readouterr().out.startswith("hydrogen: base_model: 'no model' is neither a Hug")
    task.write_text(json.dumps({
        "base_model": "runwayml/stable-diffusion-v1-5", "prompt": "a cat",
        "task_config": {"num_images": 2, "image_width": 256, "image_height": 256, "steps": 3},
    }))  # fmt: skip
    main(["--dialect", "hydrogen", str(task), "--url", server.url, "-o", str(tmp_path / "o")])
    printed = capsys.readouterr().out.split()
    assert len(printed) == 2 and all(Image.open(p).size == (256, 256) for p in printed)


# crynux-ai/stable-diffusion-task's examples/sdxl_turbo.py and examples/sd15_lcm_lora.py
# (Apache-2.0), their `args` as written there; the prompts shortened.
SDXL_TURBO = {"version": "2.0.0", "base_model": {"name": "stabilityai/sdxl-turbo"},
              "scheduler": {"method": "EulerAncestralDiscreteScheduler",
                            "args": {"timestep_spacing": "trailing"}},
              "prompt": "best quality, 1girl, off-shoulder sweater, smiling",
              "negative_prompt": "paintings, sketches, worst quality+++++",
              "task_config": {"num_images": 9, "steps": 1, "cfg": 0}}  # fmt: skip
SD15_LCM_LORA = {"version": "2.0.0", "base_model": {"name": "runwayml/stable-diffusion-v1-5"},
                 "prompt": "Self-portrait oil painting, a beautiful cyborg with golden hair, 8k",
                 "negative_prompt": "",
                 "task_config": {"num_images": 9, "safety_checker": False, "steps": 4, "cfg": 1},
                 "lora": {"model": "latent-consistency/lcm-lora-sdv1-5", "weight": 70},
                 "scheduler": {"method": "LCMScheduler"}}  # fmt: skip


def test_crynux_scheduler_names_and_their_args():
    turbo = hydrogen.inputs(SDXL_TURBO, SDXL)
    assert (turbo["scheduler"], turbo["timestep_spacing"]) == ("K_EULER_ANCESTRAL", "trailing")
    assert (turbo["num_inference_steps"], turbo["guidance_scale"]) == (1, 0)
    lcm = hydrogen.inputs(SD15_LCM_LORA, SD)
    assert lcm["scheduler"] == "LCM" and lcm["lora_weights"] == [
        "latent-consistency/lcm-lora-sdv1-5"
    ]
    karras = {"method": "DPMSolverMultistepScheduler", "args": {"use_karras_sigmas": True}}
    assert hydrogen.inputs({**SD15_LCM_LORA, "scheduler": karras}, SD)["scheduler"] == "KarrasDPM"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"beta_schedule": "linear"}, "hydrogen: scheduler.args.beta_schedule: not honoured here"),
        ({"timestep_spacing": "sideways"}, "hydrogen: scheduler.args.timestep_spacing: 'sideways'"),
    ],
)
def test_scheduler_args_that_cannot_be_honoured_are_refused_by_name(args, error):
    task = {**SD15_LCM_LORA, "scheduler": {"method": "LCMScheduler", "args": args}}
    with pytest.raises(ValueError, match=error):
        hydrogen.inputs(task, SD)


@pytest.mark.parametrize(("version", "steps"), [("1.0.0", 25), ("2.0.0", 1), ("2.5.0", 1),
                                                ("3.0.0", 1), (None, 1)])  # fmt: skip
def test_omitted_steps_follow_the_declared_format_version(version, steps):
    """Format 1.x defaulted task_config.steps to 25; 2.0.0 (SDXL Turbo) and later to 1, and a
    task without `version` is read as the current format (2.5.0)."""
    task = {"base_model": "runwayml/stable-diffusion-v1-5", "prompt": "a cat", "task_config": {}}
    if version:
        task["version"] = version
    assert hydrogen.inputs(task, SD)["num_inference_steps"] == steps


def test_crynux_mirrors_are_the_models_they_mirror():
    """Crynux's network names its Hugging Face mirrors (crynux-ai/...): the build's own model
    for the stock builds, fetched for the task otherwise."""
    sd = {"base_model": {"name": "crynux-ai/stable-diffusion-v1-5", "variant": "fp16"},
          "prompt": "x", "task_config": {}}  # fmt: skip
    assert "base_model" not in hydrogen.inputs(sd, SD)
    sdxl = {**sd, "base_model": "crynux-ai/stable-diffusion-xl-base-1.0"}
    assert "base_model" not in hydrogen.inputs(sdxl, SDXL)
    turbo = {**sd, "base_model": {"name": "crynux-ai/sdxl-turbo", "variant": "fp16"}}
    assert hydrogen.inputs(turbo, SDXL)["base_model"] == "crynux-ai/sdxl-turbo"


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("lora_weights: https://x/l.safetensors does not fit this model: ...",
         "hydrogen: lora.model: https://x/l.safetensors does not fit this model: ..."),
        ("controlnet_1_image: could not be read as an image (PNG, JPEG, WebP, ...)",
         "hydrogen: controlnet.image_dataurl: could not be read as an image"),
        ("num_inference_steps: LCM takes at most 50 steps (got 60); it needs 4 to 8",
         "hydrogen: task_config.steps: LCM takes at most 50 steps"),
        ("textual_inversions: <t>: ...", "hydrogen: textual_inversion: <t>: ..."),
    ],
)  # fmt: skip
def test_a_server_refusal_names_crynuxs_field(message, error):
    assert str(hydrogen.failed({}, 0, message)).startswith(error)


@pytest.mark.parametrize(
    ("dataurl", "problem"),
    [
        ("data:image/png;base64,iVBORw0KGgo", "not base64"),  # Incorrect padding, in Cog's words
        ("data:image/png;base64,bm90IGFuIGltYWdl", "not an image"),
    ],
)
def test_a_malformed_control_image_is_refused_by_its_field_before_any_server(dataurl, problem):
    task = {"base_model": "runwayml/stable-diffusion-v1-5", "prompt": "x", "task_config": {},
            "controlnet": {"model": "lllyasviel/control_v11p_sd15_canny",
                           "image_dataurl": dataurl}}  # fmt: skip
    with pytest.raises(ValueError, match=rf"^hydrogen: controlnet.image_dataurl: {problem}"):
        hydrogen.inputs(task, SD)


def test_canny_thresholds_take_effect():
    """preprocess.args of canny: the map is made here at the task's size with those thresholds
    (what the server makes with the defaults, 100/200, for any other), and sent as a map."""
    photo = shapes((256, 256)).filter(ImageFilter.GaussianBlur(2))  # soft edges: fewer at 100/200
    thresholds = {"low_threshold": 10, "high_threshold": 20}
    task = {"base_model": "runwayml/stable-diffusion-v1-5", "prompt": "x",
            "task_config": {"image_width": 256, "image_height": 256},
            "controlnet": {"model": "lllyasviel/control_v11p_sd15_canny",
                           "image_dataurl": data_uri(photo),
                           "preprocess": {"method": "canny", "args": thresholds}}}  # fmt: skip
    inputs = hydrogen.inputs(task, SD)
    assert inputs["controlnet_1"] == "canny" and inputs["controlnet_1_preprocess"] is False
    sent = Image.open(io.BytesIO(base64.b64decode(inputs["controlnet_1_image"].split(",")[1])))
    assert sent.convert("RGB").tobytes() == annotators.canny(photo, (10, 20)).tobytes()
    assert sent.convert("RGB").tobytes() != annotators.canny(photo).tobytes()
    default = {**task["controlnet"], "preprocess": {"method": "canny", "args": {}}}
    assert hydrogen.inputs({**task, "controlnet": default}, SD)["controlnet_1_preprocess"] is True


@pytest.mark.parametrize(
    ("preprocess", "field"),
    [
        ({"method": "softedge_pidinet", "args": {"apply_filter": True}}, "apply_filter"),
        ({"method": "depth_zoe", "args": {"gamma_corrected": True}}, "gamma_corrected"),
        ({"method": "depth_leres", "args": {"thr_a": 5}}, "thr_a"),
    ],
)
def test_preprocess_args_that_cannot_be_honoured_are_refused_by_name(preprocess, field):
    task = {"base_model": "runwayml/stable-diffusion-v1-5", "prompt": "x", "task_config": {},
            "controlnet": {"model": "lllyasviel/control_v11p_sd15_canny",
                           "image_dataurl": BARE_PNG, "preprocess": preprocess}}  # fmt: skip
    with pytest.raises(ValueError, match=rf"^hydrogen: controlnet.preprocess.args.{field}: "):
        hydrogen.inputs(task, SD)
    defaults = {"apply_filter": False, "gamma_corrected": False, "thr_a": 0}
    same = {**preprocess, "args": {field: defaults[field]}}  # the defaults are what runs here
    hydrogen.inputs({**task, "controlnet": {**task["controlnet"], "preprocess": same}}, SD)


def test_crynuxs_lcm_lora_and_turbo_examples_run(server, file_server, adapter_refs, tmp_path):
    """Their examples through Cog's server: the LCM-LoRA task on SD 1.5 (the LoRA served as
    its Hugging Face repository), the SDXL-Turbo one's scheduler on the SDXL build's model (by
    Crynux's mirror name: sdxl-turbo itself would be fetched)."""
    if server.family == "sd":
        repo = "latent-consistency/lcm-lora-sdv1-5"
        listing = {"siblings": [{"rfilename": "pytorch_lora_weights.safetensors"}]}
        file_server.put(f"api/models/{repo}", json.dumps(listing).encode())
        file_server.put(f"{repo}/resolve/main/pytorch_lora_weights.safetensors",
                        adapter_refs["sd"]["a_bytes"])  # fmt: skip
        task, build = SD15_LCM_LORA, SD
    else:
        task = {**SDXL_TURBO, "base_model": {"name": "crynux-ai/stable-diffusion-xl-base-1.0"}}
        build = SDXL
    task = {**task, "task_config": {**task["task_config"], "num_images": 2}}
    paths = run(cli_predict(server), "hydrogen", task, build, tmp_path).splitlines()
    assert len(paths) == 2 and all(Image.open(p).size == (512, 512) for p in paths)
