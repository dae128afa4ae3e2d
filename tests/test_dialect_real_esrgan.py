"""Replicate's real-esrgan requests: translated to a finish-only prediction on the build's
upscaler, run through Cog's server, answered as Replicate answers; face_enhance refused."""

import base64
import io
import json
from pathlib import Path

import pytest
from helpers import cli_predict, data_uri
from PIL import Image

from sdcog.common.pins import PIN_FILE
from sdcog.dialects import FieldError, ModelNames, real_esrgan
from sdcog.dialects.tasks import run

SD = ModelNames.from_pins(PIN_FILE)


def photo() -> Image.Image:
    return Image.open(Path(__file__).parent / "data/photos/rocket.jpg").resize((80, 60))


def test_a_request_is_the_image_finished_by_the_upscaler():
    assert real_esrgan.translate({"input": {"image": "https://x/y.png", "scale": 2.5}}, SD) == [
        {"prompt": "", "image": "https://x/y.png", "prompt_strength": 0, "upscale": 2.5,
         "output_format": "png", "disable_safety_checker": True},
    ]  # fmt: skip
    [default] = real_esrgan.translate({"input": {"image": "https://x/y.png"}}, SD)
    assert default["upscale"] == 4  # theirs


@pytest.mark.parametrize(
    "job, field, problem",
    [
        ({"face_enhance": True}, "input.face_enhance", "GFPGAN face restoration is not built"),
        ({"scale": 8}, "input.scale", "8: this build's upscaler enlarges by more than 1, up to 4"),
        ({"scale": 1}, "input.scale", "1: this build's upscaler"),
        ({"scale": 11}, "input.scale", "11 is greater than the maximum of 10"),
        ({"tile": 4}, "input.tile", "Additional properties are not allowed"),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_field(job, field, problem):
    with pytest.raises(FieldError) as raised:
        real_esrgan.translate({"input": {"image": "https://x/y.png", **job}}, SD)
    assert raised.value.field == field
    assert raised.value.problem.startswith(problem) or problem in raised.value.problem
    assert json.loads(real_esrgan.failure(raised.value))["status"] == "failed"


def test_a_request_runs_through_the_server(server, tmp_path):
    if server.family != "sd":
        pytest.skip("one family is enough")
    payload = {"input": {"image": data_uri(photo()), "scale": 2}}
    answer = json.loads(run(cli_predict(server), "real-esrgan", payload, SD, tmp_path))
    assert answer["status"] == "succeeded"
    image = Image.open(io.BytesIO(base64.b64decode(answer["output"].split(",", 1)[1])))
    assert (image.format, image.size) == ("PNG", (160, 120))
