"""Generation data in every image, as AUTOMATIC1111 writes it: read back with A1111's documented
parsing rules (written here from its format: the last line holds `Name: value` pairs, a value
JSON-quoted when it holds a comma, colon or line break; the lines before are the prompt, then
`Negative prompt:`), from real PNG, JPEG and WebP bytes, through the Generator and Cog's server."""

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import output_images
from PIL import Image

from sdcog.generate import Generator
from sdcog.outputs import infotext
from sdcog.request.request import Request

# A pair: a name (word characters, spaces, dashes, slashes), a colon, then a quoted string (JSON
# escapes inside) or anything up to the next comma.
PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
SMALL = {"num_inference_steps": 3, "width": 128, "height": 96}


def parse(text: str) -> dict[str, str]:
    """An infotext's fields: Prompt, Negative prompt, and each pair of its last line."""
    *lines, last = text.split("\n")
    fields = {}
    negative = next((i for i, line in enumerate(lines) if line.startswith("Negative prompt:")),
                    len(lines))  # fmt: skip
    fields["Prompt"] = "\n".join(lines[:negative])
    if negative < len(lines):
        fields["Negative prompt"] = "\n".join(lines[negative:])[len("Negative prompt:") :].strip()
    for name, value in PAIR.findall(last):
        fields[name] = json.loads(value) if value.startswith('"') else value.strip()
    return fields


@pytest.fixture(scope="module")
def generator(tiny_weights) -> Generator:
    return Generator(tiny_weights)


def test_quoting_is_a1111s():
    assert infotext.quote("DPM++ 2M") == "DPM++ 2M"
    assert infotext.quote("a: b, c") == '"a: b, c"'
    assert parse('x\nSteps: 3, Lora hashes: "a: 1, b: 2", Seed: 4') == {
        "Prompt": "x", "Steps": "3", "Lora hashes": "a: 1, b: 2", "Seed": "4",
    }  # fmt: skip


def autov2(url: str, file_server) -> str:
    """civitai's AutoV2 of a file the test file server serves: its SHA-256's first 10 digits."""
    served = file_server.root / url.split("/", 3)[3]
    return hashlib.sha256(served.read_bytes()).hexdigest()[:10]


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_every_field_written_is_read_back_from_the_files_bytes(
    generator, fmt, adapter_refs, file_server
):
    lora = adapter_refs["sd"]["a"]
    request = Request(prompt="a cat, (fluffy:1.2)\nsecond line", negative_prompt="blurry, dark",
                      num_outputs=2, seed=40, scheduler="KarrasDPM", clip_skip=1,
                      guidance_scale=6.5, output_format=fmt, lora_weights=(lora,),
                      lora_scales=(0.8,), **SMALL)  # fmt: skip
    generation = generator(request)
    for index, path in enumerate(generation.paths):
        fields = parse(infotext.read(Image.open(io.BytesIO(path.read_bytes()))))
        assert fields == {
            "Prompt": "a cat, (fluffy:1.2) second line", "Negative prompt": "blurry, dark",
            "Steps": "3", "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": "6.5",
            "Seed": str(40 + index), "Size": "128x96", "Model": "stable-diffusion-v1-5",
            "Clip skip": "2", "Lora hashes": f"{Path(lora).stem}: {autov2(lora, file_server)}",
            "Version": fields["Version"],
        }  # fmt: skip
        assert fields["Version"].startswith("sdcog")


def test_an_embeddings_hash_is_named_by_its_file(generator, adapter_refs, file_server):
    embedding = adapter_refs["sd"]["embedding"]
    request = Request(prompt="a <tok>", textual_inversions=(embedding,), **SMALL)
    fields = parse(infotext.read(Image.open(generator(request).paths[0])))
    assert fields["TI hashes"] == f"{Path(embedding).stem}: {autov2(embedding, file_server)}"


def test_image_to_image_hires_and_finishing_fields(generator, tmp_path):
    Image.new("RGB", (128, 96), (90, 30, 60)).save(tmp_path / "in.png")
    img2img = Request.from_inputs({"prompt": "x", "image": str(tmp_path / "in.png"),
                                   "prompt_strength": 0.6, **SMALL}, local_paths=True)  # fmt: skip
    [path] = generator(img2img).paths
    assert parse(infotext.read(Image.open(path)))["Denoising strength"] == "0.6"
    hires = Request(prompt="x", hires_scale=2, hires_strength=0.5, hires_steps=2, upscale=1.5,
                    **SMALL)  # fmt: skip
    fields = parse(infotext.read(Image.open(generator(hires).paths[0])))
    assert {k: fields[k] for k in ("Hires upscale", "Hires steps", "Hires upscaler",
                                   "Denoising strength", "Postprocess upscale by")} == {
        "Hires upscale": "2", "Hires steps": "2", "Hires upscaler": "Lanczos",
        "Denoising strength": "0.5", "Postprocess upscale by": "1.5",
    }  # fmt: skip


def test_write_metadata_false_writes_none(generator):
    for fmt in ("png", "jpg"):
        request = Request(prompt="x", output_format=fmt, write_metadata=False, **SMALL)
        image = Image.open(generator(request).paths[0])
        assert infotext.read(image) is None and "parameters" not in image.info


def test_the_metadata_changes_no_pixel(generator):
    def pixels(write: bool) -> np.ndarray:
        request = Request(prompt="x", seed=3, write_metadata=write, **SMALL)
        return np.asarray(Image.open(generator(request).paths[0]))

    assert np.array_equal(pixels(True), pixels(False))


def test_a_third_party_reader_finds_it(generator):
    """sd-parsers (MIT), which civitai-style tools use, reads our PNG and JPEG as A1111's."""
    from sd_parsers import ParserManager

    for fmt in ("png", "jpg"):
        request = Request(prompt="a lighthouse", seed=9, output_format=fmt, **SMALL)
        info = ParserManager().parse(Image.open(generator(request).paths[0]))
        assert info.generator.name == "AUTOMATIC1111"
        [sampler] = info.samplers
        assert (sampler.name, sampler.parameters["seed"], sampler.parameters["steps"]) == (
            "DPM++ 2M",
            "9",
            "3",
        )
        assert sampler.prompts[0].value == "a lighthouse"


def test_each_output_through_the_server_carries_its_own_seed(server):
    result = server.predict(prompt="a cat", num_outputs=2, seed=5, width=128, height=128,
                            num_inference_steps=2)  # fmt: skip
    seeds = [parse(image.info["parameters"])["Seed"] for image in output_images(result)]
    assert seeds == ["5", "6"]
