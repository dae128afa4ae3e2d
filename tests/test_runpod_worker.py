"""The RunPod worker (sdcog/dialects/runpod_worker.py) through the RunPod SDK's own local API server
(/run, /runsync, /status/{id}) on 127.0.0.1, over the tiny SD weights; its payload's translation
(sdcog/dialects/runpod.py)."""

import base64
import io
import json
import os
import subprocess
import sys
import time

import jsonschema
import numpy as np
import pytest
import requests
import torch
from helpers import data_uri, decode_output, output_images
from loopback import dead_proxy_env
from PIL import Image, ImageDraw

import predict
from sdcog.dialects import HERE, FieldError, runpod
from sdcog.tools.cog_server import ROOT, free_port

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def worker(make_weights, tmp_path_factory):
    """The worker as RunPod's SDK runs it with --rp_serve_api; its temporary folder to inspect."""
    tmp = tmp_path_factory.mktemp("runpod")
    port = free_port()
    env = {**os.environ, **dead_proxy_env(), "WEIGHTS_DIR": str(make_weights("sd")),
           "ALLOW_PRIVATE_URLS": "1", "TMPDIR": str(tmp / "tmp"),
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    env.pop("ALLOW_LOCAL_INPUT_PATHS", None)  # files must arrive as the worker's own downloads
    (tmp / "tmp").mkdir()
    log = open(tmp / "worker.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "sdcog.dialects.runpod_worker", "--rp_serve_api", "--rp_api_host",
         "127.0.0.1", "--rp_api_port", str(port), "--rp_log_level", "INFO"],
        cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if requests.get(f"{url}/docs", timeout=5).status_code < 500:
                break
        except requests.ConnectionError:
            pass
        assert process.poll() is None, (tmp / "worker.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the worker did not start"
        time.sleep(0.5)
    yield url, tmp / "tmp"
    process.terminate()
    process.wait(30)
    log.close()


def post(url: str, path: str, payload: dict | None = None) -> dict:
    response = requests.post(f"{url}{path}", json=payload, timeout=600)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_documented_example_runs_unchanged(worker):
    url, _ = worker
    # RunPod's "Run your first serverless endpoint with Stable Diffusion" request.
    job = {
        "input": {"prompt": "A cute fluffy white dog in the style of a Pixar animation 3D drawing."}
    }
    result = post(url, "/runsync", job)
    assert result["status"] == "COMPLETED", result
    (image,) = result["output"]
    assert set(image) == {"image", "seed"} and isinstance(image["seed"], int)
    png = Image.open(io.BytesIO(decode_output(image["image"])))
    assert (png.format, png.size) == ("PNG", (512, 512))  # the endpoint's defaults


def inpainting_case() -> tuple[Image.Image, Image.Image]:
    image = Image.new("RGB", (128, 128), (200, 40, 40))
    ImageDraw.Draw(image).ellipse((30, 30, 100, 100), fill=(20, 180, 60))
    mask = Image.new("L", (128, 128), 255)  # RunPod's: white kept ...
    ImageDraw.Draw(mask).rectangle((0, 0, 63, 127), fill=0)  # ... black repainted
    return image, mask


def test_run_then_status_inpaints_like_cog_with_the_mask_inverted(worker, server, file_server):
    """The same inpainting through /run + /status/{id} and through Cog's server (the mask
    inverted to ours): the same images and seeds, so the mask's sense, the scheduler's name,
    the defaults and the seeds all map as they should."""
    if server.family != "sd":
        pytest.skip("RunPod's endpoint is SD 1.x")
    url, tmp = worker
    image, mask = inpainting_case()
    job = {"input": {"prompt": "a ball", "init_image": file_server.put_image(image),
                     "mask": file_server.put_image(mask), "scheduler": "EULER-A", "seed": 5,
                     "num_inference_steps": 4, "num_outputs": 2,
                     "prompt_strength": 0.9}}  # fmt: skip
    queued = post(url, "/run", job)
    assert queued["status"] == "IN_PROGRESS" and queued["id"]
    result = post(url, f"/status/{queued['id']}")  # the SDK's simulator runs the job here
    assert result["status"] == "COMPLETED", result
    assert [o["seed"] for o in result["output"]] == [5, 6]
    ours = server.predict(
        prompt="a ball", image=data_uri(image), mask=data_uri(Image.eval(mask, lambda v: 255 - v)),
        scheduler="K_EULER_ANCESTRAL", seed=5, num_inference_steps=4, num_outputs=2,
        prompt_strength=0.9, guidance_scale=7.5, prompt_weighting="none",
        disable_safety_checker=True,
    )  # fmt: skip
    for theirs, mine in zip(result["output"], output_images(ours), strict=True):
        theirs = np.asarray(Image.open(io.BytesIO(decode_output(theirs["image"]))))
        assert np.array_equal(theirs, np.asarray(mine))
    assert list(tmp.glob("runpod-*")) == []  # the fetched inputs are gone


@pytest.mark.parametrize(
    ("job", "error"),
    [
        ({"prompt": "x", "width": 500}, "runpod: input.width: 500 is not a multiple of 64"),
        ({"prompt": "x", "scheduler": "LCM"}, "runpod: input.scheduler: 'LCM' is not one of"),
        ({"prompt": "x", "num_outputs": 10}, "runpod: input.num_outputs: 10 is greater than"),
        ({"prompt": "x", "mask": "data:image/png;base64,iVBORw0KGgo="},
         "runpod: input.mask: could not be "),
        ({"prompt": "x", "init_image": "http://127.0.0.1:9/none.png"},
         "runpod: input.init_image: could not connect to http://127.0.0.1:9/none.png: "
         "Connection refused"),
        ({"prompt": "x", "init_image": "file:///etc/passwd"},
         "runpod: input.init_image: file:///etc/passwd is not an http(s) URL"),
        ({"prompt": "x", "colour": "red"}, "runpod: input.colour: Additional properties"),
    ],
)  # fmt: skip
def test_bad_input_fails_naming_the_field_and_the_worker_goes_on(worker, job, error):
    url, _ = worker
    result = post(url, "/runsync", {"input": job})
    assert result["status"] == "FAILED" and result["error"].startswith(error), result


def test_a_request_the_package_refuses_names_runpods_field(worker, file_server):
    url, _ = worker
    mask = file_server.put_image(Image.new("L", (64, 64), 0))
    result = post(url, "/runsync", {"input": {"prompt": "x", "mask": mask}})
    assert result["status"] == "FAILED"
    assert result["error"].startswith("runpod: input.mask: a mask needs an image")
    then = post(url, "/runsync", {"input": {"prompt": "x", "width": 128, "height": 128,
                                            "num_inference_steps": 2}})  # fmt: skip
    assert then["status"] == "COMPLETED"


def test_translation_defaults_and_every_scheduler():
    assert runpod.inputs({"input": {"prompt": "a cat", "lora": "o/r"}}) == {
        "prompt": "a cat", "negative_prompt": "", "num_outputs": 1, "num_inference_steps": 50,
        "guidance_scale": 7.5, "scheduler": "KLMS", "seed": None,
        # RunPod's worker seeds a CUDA generator: so do we, where there is CUDA.
        "seed_device": "cuda" if torch.cuda.is_available() else "cpu",
        "disable_safety_checker": True, "prompt_weighting": "none", "output_format": "png",
        "width": 512, "height": 512, "lora_weights": ["o/r"], "lora_scales": [1.0],
    }  # fmt: skip
    img2img = runpod.inputs({"input": {"prompt": "x", "init_image": "https://a/b.png",
                                       "nsfw": True}})  # fmt: skip
    assert "width" not in img2img and img2img["prompt_strength"] == 0.8  # the image's own size
    assert img2img["disable_safety_checker"] is False
    schema = json.loads((HERE / "runpod.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    names = schema["properties"]["input"]["properties"]["scheduler"]["enum"]
    assert set(names) == set(runpod.SCHEDULERS)
    assert set(runpod.SCHEDULERS.values()) <= set(predict.SCHEDULERS)
    with pytest.raises(FieldError, match="runpod: input: 'prompt' is a required property"):
        runpod.inputs({"input": {}})


def test_the_a1111_workers_job_shape_runs_as_that_api_call(worker):
    """RunPod's popular A1111 worker takes {"api": {"method", "endpoint"}, "payload"}: the same
    job runs here as that A1111 call and is answered as A1111 answers."""
    url, _ = worker
    payload = {
        "prompt": "an astronaut riding a horse",
        "negative_prompt": "",
        "seed": 8,
        "batch_size": 1,
        "steps": 3,
        "cfg_scale": 7,
        "width": 128,
        "height": 128,
        "sampler_name": "Euler a",
        "override_settings": {"CLIP_stop_at_last_layers": 2},
    }
    job = {"input": {"api": {"method": "POST", "endpoint": "/sdapi/v1/txt2img"},
                     "payload": payload}}  # fmt: skip
    result = post(url, "/runsync", job)
    assert result["status"] == "COMPLETED", result
    answer = result["output"]
    assert answer["parameters"] == payload
    [image] = answer["images"]
    png = Image.open(io.BytesIO(base64.b64decode(image)))
    assert (png.format, png.size) == ("PNG", (128, 128))
    info = json.loads(answer["info"])
    assert info["all_seeds"] == [8] and "Sampler: Euler a" in info["infotexts"][0]
    assert "Clip skip: 2" in info["infotexts"][0]
    wrong = post(url, "/runsync", {"input": {"api": {"method": "GET", "endpoint": "/sdapi/v1/"
                                                     "sd-models"}, "payload": {}}})  # fmt: skip
    assert "is not served" in json.dumps(wrong)
