"""AUTOMATIC1111's web API bodies: webuiapi (MIT, a maintained A1111 client) sends its real
payloads to a stand-in A1111 on 127.0.0.1 whose handler is this dialect over Cog's server, and
reads our answers as it reads A1111's."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import webuiapi
from helpers import cli_predict
from PIL import Image

from sdcog.common.pins import PIN_FILE
from sdcog.dialects import FieldError, ModelNames, a1111
from sdcog.dialects.tasks import run

SD = ModelNames.from_pins(PIN_FILE)


class A1111:
    """`/sdapi/v1/txt2img` and `/img2img` on 127.0.0.1: each body recorded, then run by the
    dialect through `predict` (Cog's server), answered with the dialect's answer."""

    def __init__(self, predict, tmp_path) -> None:
        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                try:
                    answer, status = run(predict, "a1111", body, SD, tmp_path), 200
                except FieldError as e:
                    answer, status = a1111.failure(e), 422
                except (Exception, SystemExit) as e:  # shown to the test through the client
                    answer, status = json.dumps({"error": repr(e)}), 500
                data = answer.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.api = webuiapi.WebUIApi(host="127.0.0.1", port=self.httpd.server_port)
        self.api.session.trust_env = False  # its own loopback server, never a proxy


@pytest.fixture
def a1111_server(sd_server, tmp_path):
    server = A1111(cli_predict(sd_server), tmp_path)
    yield server
    server.httpd.shutdown()


def test_webuiapis_txt2img_runs_and_its_client_reads_the_answer(a1111_server):
    result = a1111_server.api.txt2img(prompt="a lighthouse", negative_prompt="fog", seed=12,
                                      steps=3, cfg_scale=6, width=192, height=128, batch_size=2,
                                      sampler_name="DPM++ 2M", scheduler="Karras")  # fmt: skip
    [body] = a1111_server.bodies
    assert body["eta"] == 1.0 and body["subseed"] == -1  # the client's defaults, all sent
    assert [image.size for image in result.images] == [(192, 128)] * 2
    assert result.info["all_seeds"] == [12, 13]
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in result.info["infotexts"][0]
    assert "Seed: 13" in result.info["infotexts"][1]


def test_webuiapis_img2img_and_hires(a1111_server):
    photo = Image.new("RGB", (128, 128), (200, 100, 50))
    result = a1111_server.api.img2img(images=[photo], prompt="a cat", steps=4, seed=3,
                                      denoising_strength=0.5)  # fmt: skip
    assert "Denoising strength: 0.5" in result.info["infotexts"][0]
    hires = a1111_server.api.txt2img(prompt="a cat", steps=2, width=128, height=128, seed=1,
                                     enable_hr=True, hr_scale=1.5,
                                     denoising_strength=0.6)  # fmt: skip
    assert hires.images[0].size == (192, 192)
    assert "Hires upscale: 1.5" in hires.info["infotexts"][0]


def test_translation_field_by_field():
    body = {"prompt": "x", "negative_prompt": "y", "steps": 30, "cfg_scale": 5, "seed": 7,
            "width": 640, "height": 512, "batch_size": 2, "n_iter": 2, "sampler_name": "Euler a",
            "scheduler": "automatic", "eta": 0.5, "styles": [],
            "override_settings": {"CLIP_stop_at_last_layers": 2}}  # fmt: skip
    assert a1111.translate(body, SD) == [{
        "prompt": "x", "negative_prompt": "y", "num_inference_steps": 30, "guidance_scale": 5.0,
        "num_outputs": 4, "width": 640, "height": 512, "output_format": "png", "seed": 7,
        "scheduler": "K_EULER_ANCESTRAL", "clip_skip": 1,
    }]  # fmt: skip


@pytest.mark.parametrize(
    "change, field, problem",
    [
        ({"subseed_strength": 0.3}, "subseed_strength", "variation seeds"),
        ({"restore_faces": True}, "restore_faces", "face_fix repaints faces"),
        ({"sampler_name": "DPM++ 2S a"}, "sampler_name", "nearest here is DPMSolverSinglestep"),
        ({"batch_size": 4, "n_iter": 3}, "batch_size", "batch_size x n_iter is 12"),
        ({"override_settings": {"sd_model_checkpoint": "dreamshaper_8 [879db523c3]"}},
         "override_settings.sd_model_checkpoint", "dreamshaper_8 [879db523c3] is not this"),
        ({"scheduler": "Align Your Steps"}, "scheduler", "Align Your Steps: one of Automatic"),
    ],
)  # fmt: skip
def test_what_cannot_be_honoured_is_refused_naming_the_field(change, field, problem):
    with pytest.raises(FieldError) as raised:
        a1111.translate({"prompt": "x", **change}, SD)
    assert raised.value.field == field and problem in raised.value.problem


def test_the_builds_own_checkpoint_by_its_name_is_the_build():
    body = {"prompt": "x", "override_settings": {"sd_model_checkpoint": "stable-diffusion-v1-5"}}
    assert "base_model" not in a1111.translate(body, SD)[0]


def test_a_refusal_by_the_server_names_a1111s_field(a1111_server):
    with pytest.raises(RuntimeError) as raised:  # webuiapi raises on a non-200 answer
        a1111_server.api.txt2img(prompt="x", width=130, height=128, steps=2)
    assert "width" in str(raised.value)


def test_controlnet_units_are_our_slots():
    unit = {
        "enabled": True,
        "module": "canny",
        "model": "control_v11p_sd15_canny [d14c016b]",
        "weight": 0.8,
        "image": "QUJD",
        "guidance_start": 0.1,
        "guidance_end": 0.9,
    }
    off = {**unit, "enabled": False}
    body = {"prompt": "x", "alwayson_scripts": {"controlnet": {"args": [unit, off]}}}
    inputs = a1111.translate(body, SD)[0]
    assert {k: v for k, v in inputs.items() if k.startswith("controlnet_")} == {
        "controlnet_1": "canny", "controlnet_1_image": "data:image/png;base64,QUJD",
        "controlnet_1_preprocess": True, "controlnet_1_conditioning_scale": 0.8,
        "controlnet_1_start": 0.1, "controlnet_1_end": 0.9,
    }  # fmt: skip
    unknown = {**unit, "model": "some_adapter [0000]"}
    with pytest.raises(FieldError) as raised:
        a1111.translate({"prompt": "x", "alwayson_scripts": {"controlnet": {"args": [unknown]}}},
                        SD)  # fmt: skip
    assert raised.value.field == "alwayson_scripts.controlnet.args.0.model"
