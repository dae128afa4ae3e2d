"""base_model and vae through Cog's real server: each form (a hub repository, a revision, a
single-file URL, a civitai AIR id), each family, swapping, one download for concurrent requests,
the refusals (pickles, a family mismatch, the allow-list) and the build's own model unchanged."""

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from helpers import cli_predict, data_uri, hydrogen_example, output_images, shapes
from model_repos import CIVITAI_VERSIONS
from PIL import Image

from sdcog.common.pins import FAMILY_PIN_FILES, PIN_FILE, names, read_pins
from sdcog.dialects import ModelNames
from sdcog.dialects.tasks import run as run_task
from sdcog.request.schedulers import make_scheduler

SMALL = {"prompt": "a lighthouse by the sea", "num_inference_steps": 3, "width": 256,
         "height": 256, "seed": 11}  # fmt: skip
FIRST: list[list[str]] = []


def run(server, **input) -> list[str]:
    result = server.predict(**(SMALL | input))
    assert result["status"] == "succeeded", result.get("logs")
    output_images(result)
    return result["output"]


def pixels(outputs: list[str]) -> list[bytes]:
    return [image.tobytes() for image in output_images({"status": "succeeded", "output": outputs})]


@pytest.fixture(autouse=True)
def builds_own_model_unchanged(models_server):
    """Before and after every case, the build's model gives what it gave first."""
    FIRST.append(FIRST[0] if FIRST else run(models_server))
    assert run(models_server) == FIRST[0]
    yield
    assert run(models_server) == FIRST[0]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_each_family_by_repository_url_and_air_id(models_server, model_repos, family):
    air_path = f"api/download/models/{CIVITAI_VERSIONS[family]}"
    before = model_repos.files.count(air_path)  # other tests' downloads
    by_repo = run(models_server, base_model=f"org/{family}")
    assert by_repo != FIRST[0]
    # The same weights as a single file (converted here with the family's configs), by URL and
    # by AIR id: the same image.
    # The same pixels; the files differ in the model each names in its generation data.
    assert pixels(run(models_server, base_model=model_repos.urls[family])) == pixels(by_repo)
    assert pixels(run(models_server, base_model=model_repos.air(family))) == pixels(by_repo)
    assert model_repos.files.count(air_path) - before == 1


def test_a_revision_and_a_swap_back(models_server, model_repos):
    a = run(models_server, base_model="org/sd1")
    commit = model_repos.hub.commit("org/sd2")
    b = run(models_server, base_model=f"org/sd2@{commit}")
    assert b != a
    assert run(models_server, base_model="org/sd1") == a
    result = models_server.predict(**SMALL, base_model="org/sd1")
    assert "base_model: org/sd1 (SD 1.x) from memory" in result["logs"]


def test_concurrent_requests_for_a_new_model_download_it_once(models_server, model_repos):
    results: list[list[str]] = []
    before = model_repos.hub.downloads("org/sd1-fp16")

    def one() -> None:
        results.append(run(models_server, base_model="org/sd1-fp16"))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0] == results[1]
    # unet, vae, text encoder: once (a server's own cache: other tests' count from before)
    assert model_repos.hub.downloads("org/sd1-fp16") - before == 3


def diffusers_with_vae(weights: Path, vae: Path) -> np.ndarray:
    """SMALL through diffusers' own pipeline over the build's base, decoded by `vae`."""
    pipe = StableDiffusionPipeline.from_pretrained(
        weights / "base", vae=AutoencoderKL.from_pretrained(vae), safety_checker=None,
        feature_extractor=None, local_files_only=True,
    )  # fmt: skip
    pipe.scheduler = make_scheduler("DPMSolverMultistep", pipe.scheduler.config)
    image = pipe(
        prompt=SMALL["prompt"], num_inference_steps=SMALL["num_inference_steps"],
        width=SMALL["width"], height=SMALL["height"], guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(SMALL["seed"]),
    ).images[0]  # fmt: skip
    return np.asarray(image, dtype=np.float64)


def test_a_vae_by_repository_decodes_as_diffusers_does_with_it(
    models_server, model_repos, make_weights
):
    (ours,) = output_images({"status": "succeeded", "output": run(models_server, vae="org/vae-sd")})
    theirs = diffusers_with_vae(make_weights("sd"), model_repos.root / "hub/org/vae-sd")
    assert np.abs(np.asarray(ours, dtype=np.float64) - theirs).mean() <= 2  # of 0..255
    # It can fail: the build's own VAE gives an image far from that one.
    (own,) = output_images({"status": "succeeded", "output": FIRST[0]})
    assert np.abs(np.asarray(own, dtype=np.float64) - theirs).mean() > 4


@pytest.mark.parametrize(
    ("input", "message"),
    [
        ({"base_model": "org/pickles"}, "base_model: org/pickles: its unet has only pickled"),
        ({"base_model": "http://127.0.0.1:9/model.ckpt"}, "base_model: http://127.0.0.1:9/model."
                                                          "ckpt is pickled weights"),
        ({"base_model": "other/model"}, "base_model: other/model is not allowed on this server"),
        ({"vae": "org/vae-sdxl"}, "vae: org/vae-sdxl is a VAE for another family"),
        ({"base_model": "org/sd2", "controlnet_1": "canny"}, "controlnet_1: the build's canny "
                                                             "ControlNet is a ControlNet for "
                                                             "another model family"),
        ({"base_model": "org/sdxl", "refine": "base_image_refiner"}, "refine: base_image_refiner"
                                                                     " needs a refiner"),
        ({"base_model": "org/missing"}, "base_model: no Hugging Face repository org/missing"),
    ],
    ids=["pickles", "ckpt-url", "allow-list", "vae-family", "controlnet-family", "refiner",
         "missing"],
)  # fmt: skip
def test_refusals_name_the_input(models_server, model_repos, data_uri_shapes, input, message):
    if "controlnet_1" in input:
        input = input | {"controlnet_1_image": data_uri_shapes}
    assert message in models_server.failure(**(SMALL | input))


@pytest.fixture(scope="module")
def data_uri_shapes() -> str:
    from helpers import data_uri

    return data_uri(shapes())


def test_the_seed_documents_examples_run_on_a_stock_build(
    models_server, model_repos, file_server, adapter_refs, control_image, tmp_path
):
    """Crynux's documented task names a fine-tune this build does not pin: fetched for it."""
    file_server.put("api/download/models/34562", adapter_refs["sd"]["a_bytes"])
    before = model_repos.hub.downloads("emilianJR/chilloutmix_NiPrunedFp32Fix")
    stock = ModelNames.from_pins(PIN_FILE)
    task = hydrogen_example(control_image.read_bytes())
    answer = run_task(cli_predict(models_server), "hydrogen", task, stock, tmp_path / "h")
    assert len(answer.splitlines()) == 9
    assert model_repos.hub.downloads("emilianJR/chilloutmix_NiPrunedFp32Fix") - before == 3
    # Runware: a civitai AIR id as the model, a repository as the VAE.
    task = [{"taskType": "imageInference", "taskUUID": "5f4b1a5e-3c1e-4e0e-9d7a-2b8f0c6d9e10",
             "model": model_repos.air("sd2"), "vae": "org/vae-sd", "positivePrompt": "a lake",
             "width": 256, "height": 256, "steps": 3, "outputType": "base64Data"}]  # fmt: skip
    answer = json.loads(
        run_task(cli_predict(models_server), "runware", task, stock, tmp_path / "r")
    )
    assert len(answer["data"]) == 1 and answer["data"][0]["imageBase64Data"]


def test_the_builds_own_names_are_its_model_in_any_weights_folder(server):
    """The test servers' weights are tiny-weights' folders in temporary folders: each name the
    family's pin gives its base model (repository, aliases, AIR ids) is that model, fetched
    from nowhere, whatever the allow-list says."""
    pins = read_pins(FAMILY_PIN_FILES[server.family])
    base = next(pin for pin in pins if pin.name == "base")
    plain = run(server)
    for name in names(base):
        result = server.predict(**SMALL, base_model=name)
        assert result["output"] == plain, (name, result.get("logs"))
        assert "downloading" not in result["logs"] and "fetching" not in result["logs"]


def test_the_face_fix_repaints_with_the_requested_model(models_server, model_repos):
    """The face pass runs on the request's model: another model's face is another face, and
    the build's own model is unchanged after (the autouse fixture)."""
    portrait = Image.open(Path(__file__).parent / "data/photos/astronaut.jpg")
    request = {"prompt": "a portrait", "image": data_uri(portrait), "prompt_strength": 0,
               "face_fix": True, "num_inference_steps": 4, "seed": 2}  # fmt: skip
    own = models_server.predict(**request)
    other = models_server.predict(**request, base_model="org/sd1")
    assert "face fix: output 0: 1 found, 1 fixed" in other["logs"]
    assert output_images(own)[0].tobytes() != output_images(other)[0].tobytes()
