"""AUTOMATIC1111's generation data read back as inputs: civitai's "Copy generation data" text,
our own images (the same bytes again), hashes looked up on civitai's by-hash API (a real HTTP
server on 127.0.0.1), and what cannot be honoured said, never dropped."""

import json
import subprocess

import pytest
import requests
from PIL import Image

from sdcog.common.pins import PIN_FILE
from sdcog.dialects import ModelNames
from sdcog.dialects.infotext import civitai_lookup, parse, read, to_inputs
from sdcog.generate import Generator
from sdcog.request.request import Request
from sdcog.tools import cli
from sdcog.tools.cog_server import ROOT

SD = ModelNames.from_pins(PIN_FILE)
# As civitai's "Copy generation data" and A1111 write it (a LoRA tag in the prompt, its hash,
# fields this package has no use for).
COPIED = """masterpiece, a knight in a forest <lora:add_detail:0.7>, detailed
Negative prompt: lowres, (bad hands:1.2)
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, ENSD: 31337, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.10.1"""  # noqa: E501


def test_civitais_copied_text_maps_field_by_field():
    inputs, unused = to_inputs(COPIED, SD, lookup=lambda digest: None)
    assert inputs == {
        "prompt": "masterpiece, a knight in a forest, detailed",
        "negative_prompt": "lowres, (bad hands:1.2)", "num_inference_steps": 28,
        "guidance_scale": 6.5, "seed": 1234567, "width": 512, "height": 768, "clip_skip": 1,
        "scheduler": "DPM++ 2M", "schedule": "Karras",
    }  # fmt: skip
    assert unused == [
        "Model: v1-5-pruned-emaonly (not this build's, and not found by its hash)",
        "Lora hashes: add_detail: 7c6bad76eb54 (not found by its hash on civitai)",
        "ENSD: 31337",
    ]


def test_what_has_no_exact_equivalent_is_named_with_the_nearest():
    text = "x\nSteps: 20, Sampler: DPM++ 2S a, Schedule type: Align Your Steps, Seed: 1"
    inputs, unused = to_inputs(text, SD)
    assert "scheduler" not in inputs and "schedule" not in inputs
    assert unused == [
        "Sampler: DPM++ 2S a (no exact equivalent; the nearest is DPMSolverSinglestep (not "
        "ancestral))",
        "Schedule type: Align Your Steps (one of Automatic, Karras, Exponential, Beta, SGM "
        "Uniform here)",
    ]


def test_a_prompt_alone_is_a_prompt():
    assert parse("a cat: fluffy, small") == {"Prompt": "a cat: fluffy, small"}


@pytest.fixture(scope="module")
def generator(tiny_weights) -> Generator:
    return Generator(tiny_weights)


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_an_image_we_made_read_back_is_made_again_byte_for_byte(generator, fmt):
    made = Request(prompt="a lighthouse, dusk", negative_prompt="fog, blur", width=128,
                   height=96, num_inference_steps=4, guidance_scale=6, seed=77, clip_skip=1,
                   scheduler="KarrasDPM", output_format=fmt)  # fmt: skip
    [path] = generator(made).paths
    inputs, unused = to_inputs(read(str(path)), SD)
    assert unused == []
    again = generator(Request.from_inputs({**inputs, "output_format": fmt}))
    assert again.paths[0].read_bytes() == path.read_bytes()


def test_hashes_are_found_on_civitais_by_hash_api(file_server):
    """LoRAs and the model by their AutoV2 hash, through the by-hash API on a real server."""
    file_server.put("api/v1/model-versions/by-hash/7c6bad76eb54",
                    json.dumps({"id": 87153, "modelId": 82098}).encode())  # fmt: skip
    file_server.put("api/v1/model-versions/by-hash/6ce0161689",
                    json.dumps({"id": 1, "modelId": 2}).encode())  # fmt: skip

    def get(url: str):
        response = requests.get(url, timeout=10, proxies={"http": None, "https": None})
        return response.json() if response.status_code == 200 else None

    inputs, unused = to_inputs(COPIED, SD, civitai_lookup(file_server.url, get))
    assert inputs["lora_weights"] == ["civitai:82098@87153"] and inputs["lora_scales"] == [0.7]
    assert inputs["base_model"] == "civitai:2@1"
    assert unused == ["ENSD: 31337"]


def test_script_predict_from_an_image_says_what_it_does_not_honour(tmp_path, capsys):
    image = Image.new("RGB", (64, 64))
    image.save(tmp_path / "in.png", pnginfo=_info(COPIED))
    inputs = cli.from_infotext(str(tmp_path / "in.png"))
    assert inputs["seed"] == 1234567 and inputs["schedule"] == "Karras"
    line = capsys.readouterr().err
    assert line.startswith("--from: not honoured: Model: v1-5-pruned-emaonly") and "ENSD" in line
    with pytest.raises(SystemExit, match="carries no generation data"):
        Image.new("RGB", (8, 8)).save(tmp_path / "bare.png")
        cli.from_infotext(str(tmp_path / "bare.png"))


def _info(text: str):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    return info


@pytest.mark.server
@pytest.mark.slow
def test_script_predict_makes_the_same_image_from_its_own_output(tiny_weights, tmp_path):
    def predict(out, *args):
        done = subprocess.run(["script/predict", "-o", str(out), *args], cwd=ROOT,
                              env={**__import__("os").environ, "WEIGHTS_DIR": str(tiny_weights)},
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        return next(out.glob("out-0-*.png"))

    first = predict(
        tmp_path / "a",
        "-i",
        "prompt=a red boat",
        "-i",
        "width=128",
        "-i",
        "height=128",
        "-i",
        "num_inference_steps=3",
        "-i",
        "scheduler=DPM++ 2M SDE",
    )
    again = predict(tmp_path / "b", "--from", str(first))
    assert again.read_bytes() == first.read_bytes()
