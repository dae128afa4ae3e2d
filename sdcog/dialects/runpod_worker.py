"""A RunPod serverless worker from the same package: RunPod's `stable-diffusion-v1` jobs
(sdcog/dialects/runpod.py), run in-process by the Generator that predict() uses.

    python -m sdcog.dialects.runpod_worker          # on RunPod: the SDK takes the endpoint's jobs
    python -m sdcog.dialects.runpod_worker --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8000
                                           # the SDK's local API: /run, /runsync, /status/{id}

Weights come from WEIGHTS_DIR (default weights/). Each job answers `[{"image", "seed"}]`: the
image as a PNG data URI, or, with BUCKET_ENDPOINT_URL set, uploaded by the SDK's rp_upload and
answered as its URL, as RunPod's own workers do. init_image and mask are fetched through the
same guard as every URL (netguard: public addresses only unless ALLOW_PRIVATE_URLS).
"""

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import runpod
from PIL import Image, ImageOps
from runpod.serverless.utils import rp_upload

from ..common import protocol
from ..common.pins import pin_file_of
from ..generate import Generator
from ..request import images
from ..request.request import Request
from ..security import transfer
from ..security.netguard import Networks
from ..serving.settings import Settings
from . import FieldError, ModelNames, a1111
from . import runpod as dialect

A1111_ENDPOINTS = {("POST", "/sdapi/v1/txt2img"), ("POST", "/sdapi/v1/img2img")}

MAX_IMAGE_BYTES = 50 * 1024**2
TIMEOUT_S = 60


class Worker:
    def __init__(self, weights_dir: Path, settings: Settings | None = None) -> None:
        self.generate = Generator(weights_dir, settings)
        self.allowed = self.generate.settings.private_networks
        # RunPod's SDK uploads to its bucket when this is set, as RunPod's own workers do.
        self.upload = bool(os.environ.get("BUCKET_ENDPOINT_URL"))
        self.names = ModelNames.from_pins(pin_file_of(weights_dir))

    def handle(self, job: dict[str, Any]) -> list[dict[str, Any]] | dict[str, Any]:
        """One job: its images and seeds, or {"error": ...} naming the input at fault. A job in
        the shape of RunPod's popular A1111 worker, `{"api": {"method", "endpoint"}, "payload"}`,
        runs as that A1111 API call and is answered as A1111 answers."""
        if isinstance(job["input"], dict) and {"api", "payload"} <= set(job["input"]):
            return self._a1111(job["input"])
        try:
            inputs = dialect.inputs({"input": job["input"]})
            with _fetched(inputs, self.allowed, "runpod", invert_mask=True) as inputs:
                generation = self.generate(Request.from_inputs(inputs))
        except FieldError as e:
            return {"error": str(e)}
        except (ValueError, RuntimeError) as e:  # the request's own checks, all flagged NSFW
            return {"error": str(dialect.field_error(str(e)))}
        return [{"image": self._answer(job["id"], output.path), "seed": output.seed}
                for output in generation.outputs]  # fmt: skip

    def _a1111(self, job: dict[str, Any]) -> dict[str, Any]:
        api = job["api"] or {}
        if (api.get("method"), api.get("endpoint")) not in A1111_ENDPOINTS:
            return {"error": f"api: {api.get('method')} {api.get('endpoint')} is not served; "
                    "POST /sdapi/v1/txt2img or /sdapi/v1/img2img"}  # fmt: skip
        try:
            [inputs] = a1111.translate(job["payload"], self.names)
            with _fetched(inputs, self.allowed, "a1111", invert_mask=False) as inputs:
                generation = self.generate(Request.from_inputs(inputs))
        except FieldError as e:
            return {"error": str(e)}
        except (ValueError, RuntimeError) as e:
            return {"error": str(a1111.failed(job["payload"], 0, str(e)))}
        files = [output.path.read_bytes() for output in generation.outputs]
        return a1111.response(job["payload"], files, [o.seed for o in generation.outputs])

    def _answer(self, job_id: str, path: Path) -> str:
        if self.upload:
            return rp_upload.upload_image(job_id, str(path))
        return protocol.data_uri(path.read_bytes())


@contextmanager
def _fetched(
    inputs: dict[str, Any], allowed: Networks, system: str, invert_mask: bool
) -> Iterator[dict[str, Any]]:
    """The inputs with their images (init image, mask, ControlNet images) as files in the
    temporary folder (where Request expects downloads), a RunPod mask inverted to ours
    (`invert_mask`); the files are removed afterwards."""
    files = []
    try:
        fetched = dict(inputs)
        for name in inputs:
            if name not in ("image", "mask") and not name.endswith("_image"):
                continue
            field = dialect.FIELDS.get(name, name) if system == "runpod" else name
            image = _image(inputs[name], field, allowed, system)
            if name == "mask" and invert_mask:  # black is repainted in RunPod's masks
                image = ImageOps.invert(image.convert("L"))
            handle, path = tempfile.mkstemp(prefix=f"{system}-", suffix=".png")
            os.close(handle)
            files.append(Path(path))
            image.save(path)
            fetched[name] = Path(path)
        yield fetched
    finally:
        for path in files:
            path.unlink(missing_ok=True)


def _image(reference: str, field: str, allowed: Networks, system: str) -> Image.Image:
    """An image from an http(s) URL (through sdcog.security.transfer) or a data URI."""
    if reference.startswith("data:"):
        _, data = protocol.read_data_uri(reference)
    else:
        try:
            with transfer.get(reference, field, TIMEOUT_S, allowed=allowed) as response:
                response.raise_for_status()
                data = response.raw.read(MAX_IMAGE_BYTES + 1, decode_content=True)
        except ValueError as e:  # transfer's errors name the field first
            raise FieldError(system, ("input", field), str(e).removeprefix(f"{field}: ")) from None
        if len(data) > MAX_IMAGE_BYTES:
            raise FieldError(system, ("input", field), f"larger than {MAX_IMAGE_BYTES} bytes")
    try:
        return images.read_image(io.BytesIO(data), field)
    except ValueError as e:  # named by the field, as every image input's errors are
        raise FieldError(system, ("input", field), str(e).removeprefix(f"{field}: ")) from None


def main() -> None:
    settings = Settings.from_env()
    runpod.serverless.start({"handler": Worker(settings.weights_dir, settings).handle})


if __name__ == "__main__":
    main()
