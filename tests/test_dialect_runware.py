"""Runware task arrays: the schema, the translation, the answer's shape, and Runware's documented
example run unchanged through Cog's real server by script/task's engine."""

import base64
import io
import json
import re
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest
from helpers import cli_predict, data_uri
from PIL import Image

from sdcog.common.pins import PIN_FILE
from sdcog.dialects import HERE, FieldError, ModelNames, runware
from sdcog.dialects.tasks import run
from sdcog.tools.cog_server import free_port

SD = ModelNames.from_pins(PIN_FILE)
SDXL = ModelNames.from_pins(PIN_FILE.with_name("pins-sdxl.toml"))
UUID = "a770f077-f413-47de-9dac-be0b26a35da6"


def documented_example() -> list[dict]:
    """Runware's 'Introduction to image inference' request, as written there (less its //
    comments, which JSON does not have)."""
    return [
        {
            "taskType": "imageInference",
            "taskUUID": UUID,
            "includeCost": True,
            "outputType": "URL",
            "outputFormat": "JPG",
            "outputQuality": 95,
            "numberResults": 2,
            "checkNSFW": True,
            "model": "runware:101@1",
            "positivePrompt": "a serene landscape with mountains and a lake",
            "width": 1024,
            "height": 1024,
        }
    ]


def build_naming_base(tmp_path: Path, family: str, air: str) -> ModelNames:
    """The family's stock pins with `air` listed for [base]: a build that serves that AIR id."""
    source = PIN_FILE if family == "sd" else PIN_FILE.with_name("pins-sdxl.toml")
    text = re.sub(r"\nair = \[[^]]*\]", "", source.read_text())  # the stock pin's own, replaced
    base = text.index("\n[base]\n")
    revision = text.index("\n", text.index("revision", base))
    pins = tmp_path / "pins.toml"
    pins.write_text(f'{text[:revision]}\nair = ["{air}"]{text[revision:]}')
    return ModelNames.from_pins(pins)


def test_the_documented_example_runs_unchanged(server, tmp_path):
    if server.family != "sdxl":
        pytest.skip("the example asks for 1024x1024: SDXL's native size")
    build = build_naming_base(tmp_path, "sdxl", "runware:101@1")
    answer = json.loads(
        run(cli_predict(server), "runware", documented_example(), build, tmp_path / "out")
    )
    data = answer["data"]
    assert len(data) == 2 and set(answer) == {"data"}
    assert {d["taskUUID"] for d in data} == {UUID}
    assert len({uuid.UUID(d["imageUUID"]) for d in data}) == 2
    assert data[1]["seed"] == data[0]["seed"] + 1  # output i uses seed + i
    assert all(d["NSFWContent"] is False and d["taskType"] == "imageInference" for d in data)
    for entry in data:
        path = Path(urlparse(entry["imageURL"]).path)
        assert path.name == f"{entry['imageUUID']}.jpg"
        image = Image.open(path)
        assert image.format == "JPEG" and image.size == (1024, 1024)
    with pytest.raises(FieldError, match="runware: model: runware:101@1 is not this build's"):
        runware.translate(documented_example(), SDXL)  # the stock build lists no AIR ids


def test_several_tasks_each_answer_in_their_output_type(server, tmp_path):
    if server.family != "sd":
        pytest.skip("one family is enough for the answer's shape")
    small = {
        "taskType": "imageInference",
        "model": "runwayml/stable-diffusion-v1-5",
        "positivePrompt": "a cat",
        "width": 128,
        "height": 128,
        "steps": 2,
        "seed": 40,
    }
    payload = [
        {"taskType": "authentication", "apiKey": "ignored here"},
        {**small, "taskUUID": str(uuid.uuid4()), "outputType": "dataURI", "outputFormat": "PNG"},
        {
            **small,
            "taskUUID": str(uuid.uuid4()),
            "outputType": "base64Data",
            "numberResults": 2,
            "outputFormat": "WEBP",
        },
    ]
    data = json.loads(run(cli_predict(server), "runware", payload, SD, tmp_path))["data"]
    assert [d["taskUUID"] for d in data] == [payload[1]["taskUUID"]] + [payload[2]["taskUUID"]] * 2
    assert [d["seed"] for d in data] == [40, 40, 41]
    assert all("NSFWContent" not in d for d in data)  # only answered when checkNSFW asks
    assert data[0]["imageDataURI"].startswith("data:image/png;base64,")
    first = Image.open(io.BytesIO(base64.b64decode(data[0]["imageDataURI"].split(",", 1)[1])))
    webp = Image.open(io.BytesIO(base64.b64decode(data[1]["imageBase64Data"])))
    assert (first.format, first.size, webp.format) == ("PNG", (128, 128), "WEBP")
    # The same seed and settings give the same image whatever the output type.
    again = {**payload[1], "outputType": "base64Data"}
    (entry,) = json.loads(run(cli_predict(server), "runware", [again], SD, tmp_path))["data"]
    assert (
        first.tobytes()
        == Image.open(io.BytesIO(base64.b64decode(entry["imageBase64Data"]))).tobytes()
    )


def test_a_refusal_by_the_server_names_the_runware_field(server, tmp_path, control_image):
    if server.family != "sd":
        pytest.skip("one family is enough")
    image = base64.b64encode(control_image.read_bytes()).decode()  # bare base64, as Runware takes
    task = {
        "taskType": "imageInference",
        "taskUUID": UUID,
        "model": "runwayml/stable-diffusion-v1-5",
        "positivePrompt": "a cat",
        "seedImage": image,
        "steps": 2,
        "advancedFeatures": {"hiresFix": True},
    }
    with pytest.raises(FieldError) as raised:
        run(cli_predict(server), "runware", [task], SD, tmp_path)
    assert raised.value.field == "advancedFeatures.hiresFix"
    assert "hires fix is for text-to-image" in raised.value.problem
    error = json.loads(runware.failure(raised.value))["errors"][0]
    assert error["parameter"] == "advancedFeatures.hiresFix" and error["taskUUID"] == UUID


def test_translation():
    task = {
        "taskType": "imageInference",
        "taskUUID": UUID,
        "model": "runwayml/stable-diffusion-v1-5",
        "positivePrompt": "a (red:1.2) cat",
        "negativePrompt": "blur",
        "width": 640,
        "height": 512,
        "steps": 30,
        "CFGScale": 5.5,
        "seed": 7,
        "scheduler": "DPM++ 2M Karras",
        "promptWeighting": "sdEmbeds",
        "clipSkip": 2,
        "seedImage": "https://example.com/a.png",
        "maskImage": "data:image/png;base64,AAAA",
        "strength": 0.6,
        "outputFormat": "WEBP",
        "lora": [{"model": "civitai:1@2", "weight": 0.5}, {"model": "o/lora"}],
        "controlNet": [
            {
                "model": "lllyasviel/control_v11p_sd15_canny",
                "guideImage": "AAAA",
                "weight": 0.7,
                "startStep": 3,
                "endStepPercentage": 80,
            }
        ],
        "ipAdapters": [
            {"model": "ip-adapter-plus-face_sd15", "guideImage": "https://x/y.png", "weight": 0.4}
        ],
        "acceleratorOptions": {"deepCache": True, "deepCacheInterval": 2},
    }
    assert runware.translate([task], SD) == [
        {
            "prompt": "a (red:1.2) cat",
            "negative_prompt": "blur",
            "num_inference_steps": 30,
            "guidance_scale": 5.5,
            "num_outputs": 1,
            "output_format": "webp",
            "output_quality": 95,
            "disable_safety_checker": True,
            "clip_skip": 2,
            "prompt_weighting": "a1111",
            "width": 640,
            "height": 512,
            "seed": 7,
            "scheduler": "KarrasDPM",
            "image": "https://example.com/a.png",
            "prompt_strength": 0.6,
            "mask": "data:image/png;base64,AAAA",
            "lora_weights": ["civitai:1@2", "o/lora"],
            "lora_scales": [0.5, 1.0],
            "controlnet_1": "canny",
            "controlnet_1_image": "data:application/octet-stream;base64,AAAA",
            "controlnet_1_preprocess": False,
            "controlnet_1_conditioning_scale": 0.7,
            "controlnet_1_start": 0.1,
            "controlnet_1_end": 0.8,
            "ip_adapter": "plus_face",
            "ip_adapter_image": "https://x/y.png",
            "ip_adapter_scale": 0.4,
            "deepcache_interval": 2,
            "deepcache_branch": 0,
        }
    ]


def test_defaults_outpaint_hires_and_refiner(tmp_path):
    task = {
        "taskType": "imageInference",
        "taskUUID": UUID,
        "positivePrompt": "a cat",
        "model": "stabilityai/stable-diffusion-xl-base-1.0",
        "width": 1024,
        "height": 1024,
        "refiner": {"model": "stabilityai/stable-diffusion-xl-refiner-1.0", "startStep": 15},
        "vae": "madebyollin/sdxl-vae-fp16-fix",
    }
    (inputs,) = runware.translate([task], SDXL)
    assert inputs["refine"] == "expert_ensemble_refiner" and inputs["high_noise_frac"] == 0.75
    assert (
        inputs["num_inference_steps"],
        inputs["guidance_scale"],
        inputs["output_format"],
        inputs["prompt_weighting"],
    ) == (20, 7, "jpg", "none")
    outpaint = {**task, "seedImage": "AAAA", "outpaint": {"left": 128, "top": 64, "blur": 4}}
    del outpaint["refiner"]
    (inputs,) = runware.translate([outpaint], SDXL)
    assert "width" not in inputs and "height" not in inputs  # the image plus the sides
    assert (inputs["outpaint_left"], inputs["outpaint_top"], inputs["outpaint_blur"]) == (
        128,
        64,
        4,
    )
    (inputs,) = runware.translate([{**task, "advancedFeatures": {"hiresFix": True}}], SDXL)
    assert inputs["hires_scale"] == runware.HIRES_SCALE
    # An AIR id the build's pins list for a ControlNet gives that ControlNet's kind.
    build = build_naming_base(tmp_path, "sd", "civitai:4201@130072")
    assert build.serves("base", "civitai:4201@130072") and not build.serves(
        "vae", "civitai:4201@130072"
    )
    pins = tmp_path / "pins.toml"
    pins.write_text(
        pins.read_text().replace(
            'repo = "lllyasviel/control_v11f1p_sd15_depth"',
            'repo = "lllyasviel/control_v11f1p_sd15_depth"\nair = ["civitai:38784@44736"]',
        )
    )
    control = {
        **task,
        "model": "civitai:4201@130072",
        "controlNet": [{"model": "civitai:38784@44736", "guideImage": "AAAA"}],
    }
    del control["refiner"], control["vae"]
    (inputs,) = runware.translate([control], ModelNames.from_pins(pins))
    assert inputs["controlnet_1"] == "depth" and "controlnet_1_model" not in inputs


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"width": 1001}, "width", "1001 is not a multiple of 8"),
        ({"model": "runware:999@1"}, "model", "runware:999@1 is not this build's model"),
        ({"scheduler": "TCDScheduler"}, "scheduler", "TCDScheduler is not served here"),
        ({"seed": 2**63}, "seed", "is greater than the maximum of 9223372036854775807"),
        ({"numberResults": 21}, "numberResults", "21 is greater than the maximum of 20"),
        ({"webhookURL": "https://x"}, "webhookURL", "'webhookURL' was unexpected"),
        ({"lora": [{"model": "runware:5@1"}]}, "lora.0.model", "only civitai AIR ids"),
        ({"seedImage": UUID}, "seedImage", "an image UUID names an image stored at Runware"),
        (
            {"controlNet": [{"model": "civitai:9@9", "guideImage": "AAAA"}]},
            "controlNet.0.model",
            "cannot tell which kind of control civitai:9@9 is",
        ),
        (
            {"controlNet": [{"model": "x/canny", "guideImage": "A"}] * 4},
            "controlNet",
            "is too long",
        ),
        (
            {"ipAdapters": [{"model": "civitai:1@1", "guideImage": "A"}]},
            "ipAdapters.0.model",
            "name the adapter by Runware's AIR id",
        ),
        (
            {"refiner": {"model": "stabilityai/stable-diffusion-xl-refiner-1.0"}},
            "refiner.model",
            "is not this build's refiner",
        ),
        (
            {"acceleratorOptions": {"teaCache": True}},
            "acceleratorOptions.teaCache",
            "'teaCache' was unexpected",
        ),
        (
            {"acceleratorOptions": {"deepCache": True, "cacheStartStep": 10, "cacheEndStep": 5}},
            "acceleratorOptions.cacheEndStep",
            "must be above cacheStartStep (10)",
        ),
        (
            {"acceleratorOptions": {"deepCache": True, "cacheStartStep": 20}},
            "acceleratorOptions.cacheStartStep",
            "must be below the cache's end (step 20 of 20)",
        ),
        (
            {"acceleratorOptions": {"deepCache": True, "cacheEndStep": 25}},
            "acceleratorOptions.cacheEndStep",
            "at most steps (20)",
        ),
        (
            {"acceleratorOptions": {"cacheStartStep": 2, "cacheStartStepPercentage": 10}},
            "acceleratorOptions.cacheStartStepPercentage",
            "give cacheStartStep or cacheStartStepPercentage, not both",
        ),
        (
            {"acceleratorOptions": {"cacheStartStepPercentage": 100}},
            "acceleratorOptions.cacheStartStepPercentage",
            "100 is greater than the maximum of 99",
        ),
        (
            {"acceleratorOptions": {"cacheMaxConsecutiveSteps": 6}},
            "acceleratorOptions.cacheMaxConsecutiveSteps",
            "6 is greater than the maximum of 5",
        ),
        ({"taskType": "imageCaption"}, "taskType", "is not one of"),
    ],
)
def test_what_cannot_be_honoured_fails_naming_the_field(change, field, problem):
    task = {
        "taskType": "imageInference",
        "taskUUID": UUID,
        "positivePrompt": "a cat",
        "model": "runwayml/stable-diffusion-v1-5",
    }
    with pytest.raises(FieldError) as raised:
        runware.translate([{"taskType": "authentication"}, {**task, **change}], SD)
    assert (raised.value.field, raised.value.dialect) == (field, "runware")
    assert problem in raised.value.problem
    error = json.loads(runware.failure(raised.value))["errors"][0]
    assert error["parameter"] == field and error["taskUUID"] == UUID
    assert error["message"].startswith(f"runware: {field}: ")


def test_flagged_outputs_are_answered_without_their_image(tmp_path):
    # generate.py's log lines for two outputs, the second left out by the safety checker.
    logs = (
        "output 0: seed 5\noutput 1: seed 6\noutput 1 (seed 6) was flagged as NSFW and left out\n"
    )
    result = {
        "output": ["data:image/jpeg;base64," + base64.b64encode(b"jpeg").decode()],
        "logs": logs,
    }
    task = {
        "taskType": "imageInference",
        "taskUUID": UUID,
        "checkNSFW": True,
        "outputType": "base64Data",
    }
    data = json.loads(runware.answer([task], [result], tmp_path))["data"]
    assert [(d["seed"], d["NSFWContent"], "imageBase64Data" in d) for d in data] == [
        (5, False, True),
        (6, True, False),
    ]


def test_the_schema_is_a_valid_json_schema():
    import jsonschema

    schema = json.loads((HERE / "runware.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)


def test_script_task_answers_runware_json(server, tmp_path, capsys):
    from sdcog.tools.task import main

    if server.family != "sd":
        pytest.skip("an SD 1.5 task")
    task = tmp_path / "task.json"
    task.write_text(
        json.dumps(
            [
                {
                    "taskType": "imageInference",
                    "taskUUID": UUID,
                    "width": 1001,
                    "model": "x",
                    "positivePrompt": "a cat",
                }
            ]
        )
    )
    # Errors are Runware's JSON too, on stdout (the exit status says it failed).
    with pytest.raises(SystemExit) as exited:
        main(["--dialect", "runware", str(task), "--weights", str(tmp_path / "none")])
    assert exited.value.code == 1
    assert json.loads(capsys.readouterr().out)["errors"][0]["parameter"] == "width"

    task.write_text(
        json.dumps(
            [
                {
                    "taskType": "imageInference",
                    "taskUUID": UUID,
                    "width": 128,
                    "height": 128,
                    "steps": 2,
                    "outputType": "URL",
                    "model": "runwayml/stable-diffusion-v1-5",
                    "positivePrompt": "a cat",
                }
            ]
        )
    )
    main(["--dialect", "runware", str(task), "--url", server.url, "-o", str(tmp_path / "o")])
    (entry,) = json.loads(capsys.readouterr().out)["data"]
    assert Image.open(urlparse(entry["imageURL"]).path).size == (128, 128)
    with pytest.raises(SystemExit):  # a server that is not there: Runware's JSON, one line
        main(["--dialect", "runware", str(task), "--url", f"http://127.0.0.1:{free_port()}"])
    (error,) = json.loads(capsys.readouterr().out)["errors"]
    assert error["message"].startswith("no Cog server answers at http://127.0.0.1:")


def test_the_documented_example_translates_on_the_build_it_names(tmp_path):
    page = (Path(__file__).parent.parent / "docs/other-systems.md").read_text()
    section = page[page.index("### Runware tasks") :]
    example = json.loads(section[section.index("```json") + 7 : section.index("```\n", 10)])
    (inputs,) = runware.translate(example, SDXL)  # the stock SDXL build: its pin lists the id
    assert inputs["lora_weights"] == ["civitai:132532@146296"] and inputs["num_outputs"] == 2
    assert "base_model" not in inputs


def test_other_models_are_fetched_for_the_task_when_they_can_be():
    task = {"taskType": "imageInference", "taskUUID": UUID, "positivePrompt": "a lake"}
    for model in ("civitai:4384@128713", "Lykon/dreamshaper-8", "https://x.org/m.safetensors"):
        (inputs,) = runware.translate([task | {"model": model, "vae": "civitai:1@2"}], SD)
        assert (inputs["base_model"], inputs["vae"]) == (model, "civitai:1@2")
    (inputs,) = runware.translate([task | {"model": "runwayml/stable-diffusion-v1-5"}], SD)
    assert "base_model" not in inputs  # the build's own
    with pytest.raises(FieldError, match="runware: vae: 'no vae' is neither a Hugging Face"):
        runware.translate([task | {"model": "civitai:1@1", "vae": "no vae"}], SD)


BARE = {"taskType": "imageInference", "taskUUID": UUID, "positivePrompt": "a cat",
        "model": "runwayml/stable-diffusion-v1-5"}  # fmt: skip


@pytest.mark.parametrize("written", ["jpg", "JPG", "Jpeg", "png", "webp", "WEBP"])
def test_output_formats_as_their_docs_write_them_in_any_case(written):
    expected = {"jpeg": "jpg"}.get(written.lower(), written.lower())
    assert (
        runware.translate([{**BARE, "outputFormat": written}], SD)[0]["output_format"] == expected
    )


@pytest.mark.parametrize(
    ("safety", "checked"),
    [({"checkContent": True}, True), ({"checkContent": False}, False),
     ({"checkContent": True, "mode": "fast"}, True), ({"mode": "full"}, True),
     ({"mode": "none"}, False)],
)  # fmt: skip
def test_the_safety_object_switches_the_nsfw_check(safety, checked, tmp_path):
    task = {**BARE, "safety": safety}
    assert runware.translate([task], SD)[0]["disable_safety_checker"] is not checked
    result = {"output": [], "logs": "output 0: seed 5\noutput 0 (seed 5) was flagged as NSFW"}
    (entry,) = json.loads(runware.answer([task], [result], tmp_path))["data"]
    assert ("NSFWContent" in entry) is checked


def test_delivery_fields_are_accepted_and_their_ignoring_said(capsys, tmp_path):
    task = {**BARE, "ttl": 3600, "includeCost": True}
    runware.translate([task], SD)
    runware.answer([task], [{"output": [], "logs": ""}], tmp_path)
    said = capsys.readouterr().err
    assert "runware: ttl ignored" in said and "runware: includeCost ignored" in said


@pytest.mark.parametrize(
    ("given", "ours"), [(42, 42), (2**32 + 7, 7), (9223372036854775807, 4294967295)]
)
def test_seeds_in_runwares_range_are_mapped_to_ours(given, ours):
    """Runware takes seeds up to 2^63 - 1; ours end at 2^32 - 1: the seed taken is Runware's
    modulo 2^32, and the answer reports the seed used."""
    assert runware.translate([{**BARE, "seed": given}], SD)[0]["seed"] == ours


@pytest.mark.parametrize(
    "spelling",
    [{"hiresFix": True}, {"advancedFeatures": {"hiresFix": True}},
     {"advancedFeatures": {"hiresfix": True}}],
)  # fmt: skip
def test_hires_fix_in_every_spelling(spelling):
    assert runware.translate([{**BARE, **spelling}], SD)[0]["hires_scale"] == 1.5


def test_images_nested_under_inputs_as_the_newer_reference_writes_them():
    image = "data:image/png;base64,iVBORw0KGgo="
    nested = runware.translate([{**BARE, "inputs": {"seedImage": image, "maskImage": image}}], SD)
    flat = runware.translate([{**BARE, "seedImage": image, "maskImage": image}], SD)
    assert nested == flat and nested[0]["image"] == image
    with pytest.raises(FieldError) as raised:
        runware.translate([{**BARE, "inputs": {"seedImage": UUID}}], SD)
    assert raised.value.path == ("inputs", "seedImage")


def test_embeddings_are_textual_inversions():
    task = {**BARE, "embeddings": [{"model": "civitai:7808@9208"}, {"model": "o/ti", "weight": 1}]}
    assert runware.translate([task], SD)[0]["textual_inversions"] == ["civitai:7808@9208", "o/ti"]
    with pytest.raises(FieldError, match="weight"):
        runware.translate([{**BARE, "embeddings": [{"model": "o/ti", "weight": 0.5}]}], SD)


def test_ip_adapters_as_runware_writes_them():
    image = "data:image/png;base64,iVBORw0KGgo="
    one = {"model": "ip-adapter-plus_sd15", "guideImages": [image], "weight": 0.7}
    inputs = runware.translate([{**BARE, "ipAdapters": [one]}], SD)[0]
    assert (inputs["ip_adapter"], inputs["ip_adapter_image"]) == ("plus", image)
    refusals = [
        ({**one, "guideImages": [image, image]}, ("ipAdapters", 0, "guideImages")),
        ([one, one], ("ipAdapters", 1)),
    ]
    for adapters, path in refusals:
        adapters = adapters if isinstance(adapters, list) else [adapters]
        with pytest.raises(FieldError) as raised:
            runware.translate([{**BARE, "ipAdapters": adapters}], SD)
        assert raised.value.path == tuple(str(p) for p in path), raised.value


@pytest.mark.parametrize(
    ("air", "build", "kind"),
    [("runware:55@5", SD, "standard"), ("runware:55@6", SD, "plus"),
     ("runware:55@8", SD, "plus_face"), ("runware:55@4", SDXL, "standard"),
     ("runware:55@2", SDXL, "plus"), ("runware:55@3", SDXL, "plus_face")],
)  # fmt: skip
def test_runwares_ip_adapter_air_ids_name_the_files_the_build_pins(air, build, kind):
    """Runware's IP-Adapter catalogue (its reference, ipAdapters.model) names h94/IP-Adapter's
    files by AIR id: each the build pins is its kind."""
    adapter = {"model": air, "guideImages": ["data:image/png;base64,iVBORw0KGgo="]}
    assert runware.translate([{**BARE, "ipAdapters": [adapter]}], build)[0]["ip_adapter"] == kind


@pytest.mark.parametrize(
    ("model", "build", "problem"),
    [
        ("runware:55@1", SDXL, "runware:55@1 (ip-adapter_sdxl): not an IP-Adapter file this"),
        ("runware:55@7", SD, "runware:55@7 (ip-adapter_sd15_light): not an IP-Adapter file"),
        ("runware:55@5", SDXL, "runware:55@5 (ip-adapter_sd15): not an IP-Adapter file this"),
        ("ip-adapter_sd15", SDXL, "ip-adapter_sd15: not an IP-Adapter file this build pins"),
        ("runware:105@1", SD, "name the adapter by Runware's AIR id"),
    ],
)
def test_ip_adapters_the_build_does_not_pin_are_refused_with_those_it_does(model, build, problem):
    adapter = {"model": model, "guideImage": "data:image/png;base64,iVBORw0KGgo="}
    with pytest.raises(FieldError) as raised:
        runware.translate([{**BARE, "ipAdapters": [adapter]}], build)
    assert raised.value.field == "ipAdapters.0.model"
    assert problem in raised.value.problem
    offered = "runware:55@4 (ip-adapter_sdxl_vit-h)" if build is SDXL else "runware:55@5"
    assert offered in raised.value.problem


def test_an_ip_adapter_named_by_its_air_id_steers_through_the_server(server):
    """As Runware's reference writes an IP-Adapter (its plus-face AIR id, guideImages, weight
    0.75), on the build's own model: the adapter the id names steers."""
    air, build = ("runware:55@8", SD) if server.family == "sd" else ("runware:55@3", SDXL)
    guide = Image.effect_noise((96, 96), 64).convert("RGB")
    adapter = {"model": air, "guideImages": [data_uri(guide)], "weight": 0.75}
    task = {**BARE, "model": build.pinned("base"), "width": 128, "height": 128, "steps": 4,
            "seed": 1, "ipAdapters": [adapter]}  # fmt: skip
    (inputs,) = runware.translate([task], build)
    result = server.predict(**inputs)
    assert "ip_adapter: plus_face at scale 0.75" in result["logs"], result
    del task["ipAdapters"]
    assert server.predict(**runware.translate([task], build)[0])["output"] != result["output"]


def test_the_sdxl_build_answers_to_civitais_sdxl_vae_fix_air():
    """civitai model 101055 version 128078, "SD XL v1.0 VAE fix": the SDXL build's own model (its
    pin file's title), the id Runware's and civitai's SDXL examples name; nothing is fetched."""
    task = {**BARE, "model": "civitai:101055@128078"}
    assert "base_model" not in runware.translate([task], SDXL)[0]
    urn = {**task, "model": "urn:air:sdxl:checkpoint:civitai:101055@128078"}
    assert "base_model" not in runware.translate([urn], SDXL)[0]


def test_number_results_up_to_twenty_run_as_predictions_of_ten(tmp_path):
    """Runware's numberResults goes to 20, predict()'s num_outputs to 10 (each prediction is
    denoised in memory-bounded batches): a task of 20 is two predictions, seeds following on,
    answered as one task."""
    task = {**BARE, "numberResults": 20, "seed": 5, "outputType": "base64Data"}
    first, second = runware.translate([task], SD)
    assert (first["num_outputs"], first["seed"]) == (10, 5)
    assert (second["num_outputs"], second["seed"]) == (10, 15)
    png = "data:image/png;base64," + base64.b64encode(b"png").decode()

    def result(start: int) -> dict:
        logs = "\n".join(f"output {i}: seed {start + i}" for i in range(10))
        return {"output": [png] * 10, "logs": logs}

    data = json.loads(runware.answer([task], [result(5), result(15)], tmp_path))["data"]
    assert [d["seed"] for d in data] == list(range(5, 25))
    assert {d["taskUUID"] for d in data} == {UUID}
    assert runware.failed([task], 1, "prompt: too long").task == UUID
    assert [p["num_outputs"] for p in runware.translate([{**BARE, "numberResults": 13}], SD)] == [
        10, 3,
    ]  # fmt: skip


def accelerated(**options) -> dict:
    task = {**BARE, "steps": 20, "acceleratorOptions": options}
    return runware.translate([task], SD)[0]


def test_cache_start_and_end_steps_are_a_deepcache_window():
    """acceleratorOptions' cacheStartStep/cacheEndStep, or their percentages of the steps, are
    deepcache_start/deepcache_end; cacheMaxConsecutiveSteps caps the calls reused in a row."""
    deep = {"deepCache": True, "deepCacheInterval": 3}
    steps = accelerated(**deep, cacheStartStep=4, cacheEndStep=16)
    assert (steps["deepcache_start"], steps["deepcache_end"]) == (0.2, 0.8)
    percent = accelerated(**deep, cacheStartStepPercentage=20, cacheEndStepPercentage=80)
    assert (percent["deepcache_start"], percent["deepcache_end"]) == (0.2, 0.8)
    assert accelerated(**deep, cacheEndStep=10)["deepcache_end"] == 0.5
    plain = accelerated(**deep)
    assert "deepcache_start" not in plain and "deepcache_end" not in plain
    assert plain["deepcache_interval"] == 3  # Runware's default cap (3 in a row) not applied
    assert accelerated(**deep, cacheMaxConsecutiveSteps=1)["deepcache_interval"] == 2
    assert accelerated(**deep, cacheMaxConsecutiveSteps=4)["deepcache_interval"] == 3


def test_cache_steps_without_a_cache_are_accepted_and_their_ignoring_said(capsys, tmp_path):
    task = {**BARE, "acceleratorOptions": {"cacheStartStep": 2, "cacheMaxConsecutiveSteps": 2}}
    inputs = runware.translate([task], SD)[0]
    assert not any(name.startswith("deepcache_") for name in inputs)
    runware.answer([task], [{"output": [], "logs": ""}], tmp_path)
    said = capsys.readouterr().err
    assert "runware: acceleratorOptions.cacheStartStep ignored (no cache is on" in said
    assert "runware: acceleratorOptions.cacheMaxConsecutiveSteps ignored" in said


def test_a_cache_window_takes_effect_through_the_server(server):
    """The window reaches DeepCache: 10 steps, interval 3, steps 3 to 7 of 10: 3 calls reused."""
    window = {"deepCache": True, "cacheStartStep": 3, "cacheEndStep": 8}
    task = {**BARE, "steps": 10, "width": 128, "height": 128, "scheduler": "DDIMScheduler",
            "acceleratorOptions": window}  # fmt: skip
    (inputs,) = runware.translate([task], SD)
    result = server.predict(**inputs)
    assert "deepcache: 3 of 10 base UNet calls reused" in result["logs"], result["logs"]


def sdk_example(**fields) -> dict:
    """A task as Runware's Python SDK sends an IImageInference (taskType and a taskUUID)."""
    return {"taskType": "imageInference", "taskUUID": UUID, **fields}


# Runware/sdk-python's examples/02_advanced_image_generation.py at 1cacc80 (MIT, Copyright (c)
# 2024 Runware Inc.): each IImageInference's fields, as written there.
SDK_LORA = sdk_example(
    positivePrompt="masterpiece, best quality, 1girl, elegant dress, garden background, soft "
    "lighting", model="civitai:36520@76907",
    lora=[{"model": "civitai:58390@62833", "weight": 0.8},
          {"model": "civitai:42903@232848", "weight": 0.6}],
    numberResults=3, height=1024, width=768, negativePrompt="worst quality, blurry, nsfw",
    steps=35, CFGScale=8.0, outputFormat="PNG", includeCost=True,
)  # fmt: skip
SDK_CONTROLNET = sdk_example(
    positivePrompt="beautiful anime character, detailed eyes, colorful hair",
    model="civitai:4384@128713",
    controlNet=[{"model": "civitai:38784@44716", "guideImage":
                 "https://huggingface.co/datasets/mishig/sample_images/resolve/main/canny-edge.jpg",
                 "weight": 0.8, "startStep": 0, "endStep": 15, "controlMode": "balanced"}],
    numberResults=1, height=768, width=768, steps=30, CFGScale=7.0, seed=12345,
)  # fmt: skip
SDK_REFINER = sdk_example(
    positivePrompt="hyperrealistic portrait of a astronaut in space, detailed helmet reflection",
    model="civitai:101055@128078", refiner={"model": "civitai:101055@128080", "startStep": 25},
    numberResults=1, height=1024, width=1024, steps=40, CFGScale=7.5, outputFormat="PNG",
)  # fmt: skip
SDK_ACCELERATORS = sdk_example(
    positivePrompt="vibrant fantasy landscape with magical creatures", model="runware:100@1",
    acceleratorOptions={"teaCache": True, "teaCacheDistance": 0.4, "cacheStartStep": 5,
                        "cacheStopStep": 25},
    numberResults=1, height=1024, width=1024, steps=28, CFGScale=3.5,
)  # fmt: skip


def test_runwares_sdk_examples_translate_or_are_refused_naming_the_field():
    (lora,) = runware.translate([SDK_LORA], SDXL)
    assert lora["base_model"] == "civitai:36520@76907"  # fetched for the task
    assert (lora["lora_weights"], lora["lora_scales"]) == (
        ["civitai:58390@62833", "civitai:42903@232848"], [0.8, 0.6],
    )  # fmt: skip
    assert (lora["num_outputs"], lora["width"], lora["height"]) == (3, 768, 1024)
    assert (lora["num_inference_steps"], lora["guidance_scale"]) == (35, 8.0)
    # An AIR id of a ControlNet no pin lists: its kind cannot be told.
    with pytest.raises(FieldError, match="cannot tell which kind of control") as raised:
        runware.translate([SDK_CONTROLNET], SD)
    assert raised.value.field == "controlNet.0.model"
    # TeaCache is for transformer models (FLUX, which runware:100@1 is).
    with pytest.raises(FieldError) as raised:
        runware.translate([SDK_ACCELERATORS], SD)
    assert raised.value.field in ("acceleratorOptions.teaCache", "model"), raised.value


def test_the_sdks_refiner_example_runs_unchanged_on_the_sdxl_build(sdxl_server):
    """civitai's SDXL base and refiner (VAE fix) AIR ids are the SDXL build's pins."""
    (inputs,) = runware.translate([SDK_REFINER], SDXL)
    assert "base_model" not in inputs
    assert (inputs["refine"], inputs["high_noise_frac"]) == ("expert_ensemble_refiner", 0.625)
    result = sdxl_server.predict(**inputs)
    assert "refine: expert_ensemble_refiner" in result["logs"], result
    assert "timings" in result["logs"]


def test_the_sdks_cache_stop_step_is_the_references_cache_end_step():
    """Runware's Python SDK writes the end of the cache window as cacheStopStep."""
    deep = {"deepCache": True, "cacheStartStep": 4}
    assert accelerated(**deep, cacheStopStep=16) == accelerated(**deep, cacheEndStep=16)
    with pytest.raises(FieldError, match="give cacheEndStep or cacheStopStep, not both") as raised:
        accelerated(**deep, cacheStopStep=16, cacheEndStep=16)
    assert raised.value.field == "acceleratorOptions.cacheStopStep"
    with pytest.raises(FieldError, match="at most steps") as raised:
        accelerated(**deep, cacheStopStep=30)
    assert raised.value.field == "acceleratorOptions.cacheStopStep"  # as the payload spells it


def test_an_image_upscale_task_enlarges_its_input_image(server, tmp_path):
    """Runware's imageUpscale: inputImage enlarged upscaleFactor times by the build's upscaler,
    answered as Runware answers it (no seed); a mixed payload keeps its order."""
    if server.family != "sd":
        pytest.skip("one family is enough")
    photo = Image.open(Path(__file__).parent / "data/photos/rocket.jpg").resize((96, 64))
    upscale = {"taskType": "imageUpscale", "taskUUID": str(uuid.uuid4()),
               "inputImage": data_uri(photo), "upscaleFactor": 2, "outputType": "base64Data",
               "outputFormat": "PNG"}  # fmt: skip
    assert runware.translate([upscale], SD) == [{
        "prompt": "", "image": upscale["inputImage"], "prompt_strength": 0, "upscale": 2,
        "output_format": "png", "output_quality": 95, "disable_safety_checker": True,
    }]  # fmt: skip
    inference = {"taskType": "imageInference", "taskUUID": UUID, "positivePrompt": "a cat",
                 "model": "runwayml/stable-diffusion-v1-5", "width": 128, "height": 128,
                 "steps": 2, "outputType": "base64Data"}  # fmt: skip
    data = json.loads(run(cli_predict(server), "runware", [upscale, inference], SD, tmp_path))
    first, second = data["data"]
    assert first["taskType"] == "imageUpscale" and "seed" not in first
    assert (second["taskType"], second["taskUUID"]) == ("imageInference", UUID)
    image = Image.open(io.BytesIO(base64.b64decode(first["imageBase64Data"])))
    assert (image.format, image.size) == ("PNG", (192, 128))


@pytest.mark.parametrize(
    "change, field",
    [({"upscaleFactor": 8}, "upscaleFactor"), ({"upscaleFactor": 2, "positivePrompt": "x"},
                                                 "positivePrompt")],
)  # fmt: skip
def test_an_image_upscale_task_is_checked_as_its_own_kind(change, field):
    task = {"taskType": "imageUpscale", "taskUUID": UUID, "inputImage": "data:,", **change}
    with pytest.raises(FieldError) as raised:
        runware.translate([task], SD)
    assert raised.value.field == field
    assert json.loads(runware.failure(raised.value))["errors"][0]["taskType"] == "imageUpscale"
