"""OpenSourceAIs' ai_diffusion bodies: the schema's documented ranges, the translation, their
answer and error shapes, and their documented request run through Cog's real server."""

import json
from pathlib import Path

import jsonschema
import pytest
from helpers import cli_predict, shapes
from PIL import Image

import predict
from sdcog.dialects import HERE, FieldError, ModelNames, opensourceais
from sdcog.dialects.tasks import run

SD = ModelNames.from_pins()


def documented_request(image_url: str) -> dict:
    """The params of the request OpenSourceAIs' "Check a request" page shows, as written there,
    but for `url`: theirs is an upload on opensourceAIs.com, here one on 127.0.0.1."""
    return {
        "username": "test.com", "word": "a big blue book on a red table", "width": 320,
        "height": 320, "model": "ldm/stable-diffusion-v1/sd-v1-4.ckpt", "cimg": 1,
        "guidance": 8.5, "strength": 0.5, "seed": 15366, "steps": 20, "url": image_url,
        "uid_backlog": 1677773592000, "client_token": "a64f7ccc38cd34baac87e5f9fc2",
    }  # fmt: skip


def test_translation_and_defaults():
    (inputs,) = opensourceais.translate({"word": "a gold coin from rome"}, SD)
    assert inputs == {
        "prompt": "a gold coin from rome", "num_inference_steps": 20, "guidance_scale": 7.5,
        "num_outputs": 1, "width": 320, "height": 320, "seed": 1,
        "seed_device": inputs["seed_device"], "scheduler": "DDIM", "prompt_weighting": "none",
        "preview_every": 0,
    }  # fmt: skip
    (img2img,) = opensourceais.translate(
        {"word": "x", "url_upload": "https://a/b.png", "saveinterval": 5, "cimg": 3}, SD
    )
    assert (img2img["image"], img2img["prompt_strength"]) == ("https://a/b.png", 0.75)
    assert (img2img["preview_every"], img2img["num_outputs"]) == (5, 3)
    (other,) = opensourceais.translate({"word": "x", "model": "Lykon/dreamshaper-8"}, SD)
    assert other["base_model"] == "Lykon/dreamshaper-8"
    assert "base_model" not in opensourceais.translate(documented_request("https://a/b"), SD)[0]
    schema = json.loads((HERE / "opensourceais.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(opensourceais.FIELDS) <= set(predict.Predictor.predict.__annotations__)


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"width": 500}, "width", "500 is not one of [320, 384, 448, 512, 640, 768]"),
        ({"steps": 201}, "steps", "201 is greater than the maximum of 200"),
        ({"guidance": 0.05}, "guidance", "0.05 is less than the minimum of 0.1"),
        ({"strength": 1.5}, "strength", "1.5 is greater than the maximum of 1"),
        ({"cimg": 5}, "cimg", "5 is not one of [1, 2, 3, 4]"),
        ({"seed": 0}, "seed", "0 is less than the minimum of 1"),
        ({"url_upload": "ftp://x/y.png"}, "url_upload", "does not match"),
        ({"model": "other.ckpt"}, "model", "'other.ckpt' is neither a Hugging Face"),
        ({"colour": "red"}, "colour", "'colour' was unexpected"),
        ({"guidence": 7}, "guidence", "'guidence' was unexpected) (did you mean guidance?)"),
    ],
)
def test_what_cannot_be_honoured_fails_in_their_shape(change, field, problem):
    with pytest.raises(FieldError) as raised:
        opensourceais.translate({"word": "a cat"} | change, SD)
    answer = json.loads(opensourceais.failure(raised.value))
    assert answer["data"] is None and answer["status"] == 400
    assert answer["statusText"].startswith(f"opensourceais: {field}: ")
    assert problem in answer["statusText"]


def test_a_server_refusal_names_their_field():
    error = opensourceais.failed({}, 0, "num_inference_steps: must be at least 1")
    assert error.field == "steps"


def test_their_documented_request_runs_unchanged(sd_server, file_server, tmp_path):
    url = file_server.put_image(shapes((320, 320)))
    answer = json.loads(run(cli_predict(sd_server), "opensourceais", documented_request(url), SD,
                            tmp_path))  # fmt: skip
    uid = answer["data"]["uid"]
    assert set(answer["data"]) == {"uid", "created_at"} and answer["data"]["created_at"][-1] == "Z"
    record = json.loads((tmp_path / f"{uid}.json").read_text())["data"]
    assert record["params"] == documented_request(url) and record["ai_engine"] == "diffusion"
    ((entry),) = record["response"]
    assert entry["cycle"] == 0 and Image.open(entry["filename"]).size == (320, 320)


def test_saveinterval_writes_the_saved_steps_beside_the_images(sd_server, tmp_path):
    body = {"word": "a lighthouse", "steps": 4, "saveinterval": 2, "cimg": 2, "seed": 7}
    uid = json.loads(run(cli_predict(sd_server), "opensourceais", body, SD, tmp_path))["data"][
        "uid"
    ]
    response = json.loads((tmp_path / f"{uid}.json").read_text())["data"]["response"]
    assert sorted(e["cycle"] for e in response) == [0, 0, 2, 2, 4, 4]
    for entry in response:
        path = Path(entry["filename"])
        assert path.parent == tmp_path and path.exists()
        assert path.suffix == (".png" if entry["cycle"] == 0 else ".jpg")
