"""Replicate's real-esrgan model (nightmareai/real-esrgan): `{"input": {image, scale,
face_enhance}}` as predict() inputs, answered as Replicate answers a finished prediction.

The image is finished only (prompt_strength 0) with upscale = scale, by the build's trained
upscaler (Real-ESRGAN x4plus where the stock pins are kept). Their scale goes from 0 to 10; ours
from 1 to 4, in steps of 0.05. face_enhance runs GFPGAN there, a face restorer this package does
not build: it is refused, pointing to predict()'s face_fix (which repaints faces with the model).
"""

import json
from pathlib import Path
from typing import Any

from ..common import protocol
from . import FieldError, ModelNames, validate

SCALE = 4  # theirs
FIELDS = {"image": "image", "upscale": "scale", "prompt_strength": "scale"}


def translate(payload: dict[str, Any], build: ModelNames) -> list[dict[str, Any]]:
    validate(payload, "real_esrgan")
    job = payload["input"]
    if job.get("face_enhance"):
        raise _error(
            "face_enhance",
            "GFPGAN face restoration is not built here; predict()'s face_fix repaints faces "
            "with the model instead (leave face_enhance out)",
        )
    scale = job.get("scale", SCALE)
    if not 1 < scale <= 4:
        raise _error("scale", f"{scale}: this build's upscaler enlarges by more than 1, up to 4")
    return [{"prompt": "", "image": job["image"], "prompt_strength": 0, "upscale": scale,
             "output_format": "png", "disable_safety_checker": True}]  # fmt: skip


def failed(payload: dict[str, Any], index: int, message: str) -> FieldError:
    name, _, problem = message.partition(": ")
    return _error(FIELDS.get(name, name), problem or message)


def answer(payload: dict[str, Any], results: list[dict[str, Any]], out: Path) -> str:
    """Replicate's finished prediction: its output is the one image (here a data URI)."""
    [uri] = protocol.final_outputs(results[0])
    return json.dumps({"status": "succeeded", "output": uri}, indent=2)


def failure(error: ValueError) -> str:
    return json.dumps({"status": "failed", "error": str(error)}, indent=2)


def _error(field: str, problem: str) -> FieldError:
    return FieldError("real-esrgan", ("input", field), problem)
