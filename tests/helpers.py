"""Helpers the tests share: Cog's server as a test drives it, data URIs in and out, the picture
the ControlNet tests annotate. Fixtures live in conftest.py; no test module imports another."""

import base64
import contextlib
import functools
import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image, ImageDraw

from sdcog.common.protocol import error_message
from sdcog.tools import cli
from sdcog.tools.cog_server import CogServer, RunningServer

NATIVE = {"sd": 512, "sdxl": 1024}


# Tiny LoRAs and ControlNets (SDXL union: 6 MB) are smaller; the oversize test serves more.
ADAPTER_MAX_BYTES = 8_000_000


class ServerUnderTest(CogServer):
    def __init__(self, weights: Path, log_path: Path, family: str, env: dict[str, str]) -> None:
        super().__init__(weights, open(log_path, "w"), env=env)
        self.family = family
        self.native = NATIVE[family]

    def predict(self, **input) -> dict:
        """A sync prediction; asserts only that the server answered 200 (never 409: see
        sdcog/serving/runner.py, and test_two_clients_back_to_back_never_see_409)."""
        response = self.post(input)
        assert response.status_code == 200, response.text
        return response.json()

    def failure(self, **input) -> str:
        """The error of a prediction that must fail, as predict() raised it (no Cog prefixes)."""
        result = self.predict(**input)
        assert result["status"] == "failed", result.get("logs")
        return error_message(result["error"])

    def stop(self) -> None:
        super().stop()
        self.log.close()


def cli_predict(server: CogServer) -> Callable[[dict], dict]:
    """script/task's way of running one prediction (async, its logs shown), on `server`."""
    return functools.partial(cli.run, RunningServer(server.url))


def data_uri(image: Image.Image, format: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    mime = {"PNG": "image/png", "JPEG": "image/jpeg"}[format]
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def decode_output(uri: str) -> bytes:
    assert uri.startswith("data:"), uri[:80]
    return base64.b64decode(uri.split(",", 1)[1])


def output_images(result: dict) -> list[Image.Image]:
    assert result["status"] == "succeeded", json.dumps(result)[:2000]
    return [Image.open(io.BytesIO(decode_output(uri))) for uri in result["output"]]


def shapes(size: tuple[int, int] = (160, 128)) -> Image.Image:
    """A photo stand-in: a grey background with a bright disc and a dark bar."""
    image = Image.new("RGB", size, (120, 120, 120))
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 20, 80, 80), fill=(250, 230, 40))
    draw.rectangle((100, 30, 130, 110), fill=(10, 20, 30))
    return image


def hydrogen_example(control_png: bytes) -> dict:
    """Crynux's 'Stable Diffusion Task' page, as written there: only `False` (Python) is JSON's
    `false`, and its elided image ("base64,image/png:...") a real one."""
    return {
        "base_model": "emilianJR/chilloutmix_NiPrunedFp32Fix",
        "prompt": "a realistic portrait photo of a beautiful girl, blonde hair+++, smiling, "
        "facing the viewer",
        "negative_prompt": "low resolution++, bad hands",
        "task_config": {"num_images": 9, "safety_checker": False},
        "lora": {"model": "https://civitai.com/api/download/models/34562", "weight": 80},
        "controlnet": {
            "model": "lllyasviel/control_v11p_sd15_openpose",
            "weight": 90,
            "image_dataurl": "data:image/png;base64," + base64.b64encode(control_png).decode(),
            "preprocess": {"method": "openpose_face"},
        },
    }


@contextlib.contextmanager
def logged(name: str) -> Iterator[list[str]]:
    """The messages logger `name` passes on (after its filters) while the block runs: wherever
    its library's own handler writes, which output capture may not see."""
    messages: list[str] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger, recorder = logging.getLogger(name), Recorder()
    logger.addHandler(recorder)
    try:
        yield messages
    finally:
        logger.removeHandler(recorder)
