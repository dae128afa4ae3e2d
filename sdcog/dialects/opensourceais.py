"""OpenSourceAIs' `ai_diffusion` request body, as predict() inputs, answered as they answer.

Fields and ranges are theirs (incubiq.gitbook.io/opensourceais: ai_diffusion, its config file,
"Check a request"): `word` the prompt, `url_upload` (or `url`, as their requests echo it) an
image for image-to-image at `strength` (default 0.75), `steps` (20, at most 200), `guidance`
(7.5, 0.1 to 10), `cimg` images (1 to 4), `width`/`height` from their list (320 to 768, default
320), `seed` (1 to 1,000,000, default 1), `saveinterval` (save the image every N steps: our
previews). Their engine is CompVis' Stable Diffusion scripts: DDIM, prompts as written, and the
noise of a CUDA generator (where there is one). `model` names their SD v1.4 checkpoint path (the
build's own model here) or, as our base_model, a Hugging Face id or a .safetensors URL.

The answer is their 201 body, `{"data": {"uid", "created_at"}}`; the images and the saved steps
are written to the output folder with `<uid>.json` beside them, in the shape their "Check a
request" answers (`response`: one `{"filename", "cycle"}` per file; cycle 0 is an image, cycle k
the step it was saved at). Errors are their `{"data": null, "status", "statusText"}`.
"""

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ..common import protocol
from . import FieldError, ModelNames, check_model, validate

STEPS, GUIDANCE, STRENGTH, SIZE, SEED = 20, 7.5, 0.75, 320, 1
# Their checkpoint path for Stable Diffusion v1.4 (documented default, and as requests echo it).
THEIR_MODELS = {
    "models/ldm/stable-diffusion-v1/sd-v1-4.ckpt",
    "ldm/stable-diffusion-v1/sd-v1-4.ckpt",
}
# predict()'s inputs -> their field, to name it when the server refuses one.
FIELDS = {
    "prompt": "word", "image": "url_upload", "prompt_strength": "strength",
    "num_inference_steps": "steps", "guidance_scale": "guidance", "num_outputs": "cimg",
    "width": "width", "height": "height", "seed": "seed", "preview_every": "saveinterval",
    "base_model": "model",
}  # fmt: skip


def translate(body: dict[str, Any], build: ModelNames) -> list[dict[str, Any]]:
    """One prediction, or a FieldError naming their field."""
    validate(body, "opensourceais")
    inputs: dict[str, Any] = {
        "prompt": body["word"],
        "num_inference_steps": body.get("steps", STEPS),
        "guidance_scale": body.get("guidance", GUIDANCE),
        "num_outputs": body.get("cimg", 1),
        "width": body.get("width", SIZE),
        "height": body.get("height", SIZE),
        "seed": body.get("seed", SEED),
        "seed_device": "cuda" if torch.cuda.is_available() else "cpu",
        "scheduler": "DDIM",
        "prompt_weighting": "none",
        "preview_every": body.get("saveinterval", 0),
    }
    if image := body.get("url_upload") or body.get("url"):
        inputs |= {"image": image, "prompt_strength": body.get("strength", STRENGTH)}
    model = body.get("model")
    if model and model not in THEIR_MODELS and not build.serves("base", model):
        check_model("opensourceais", "model", model)
        inputs["base_model"] = model
    return [inputs]


def failed(body: dict[str, Any], index: int, message: str) -> FieldError:
    """The server's error, naming their field for our input."""
    name, _, problem = message.partition(": ")
    return FieldError("opensourceais", (FIELDS.get(name, name),), problem or message)


def answer(body: dict[str, Any], results: list[dict[str, Any]], out: Path) -> str:
    """Their 201 body; the files and `<uid>.json` written to `out`."""
    (result,) = results
    started = datetime.now(UTC)
    uid = int(time.time() * 1000)  # theirs are epoch milliseconds
    stamp = str(uid)
    previews = protocol.previews(result.get("logs", ""))
    saved = protocol.save_previews(result, out, stamp)
    images = protocol.save(result, out, stamp)
    response = [{"filename": str(path), "cycle": 0} for path in images]
    response += [{"filename": str(path), "cycle": step}
                 for path, (_, step) in zip(saved, previews, strict=True)]  # fmt: skip
    request = {
        "uid_backlog": uid, "ai_engine": "diffusion", "params": body,
        "started_at": _iso(started), "response": response,
        "cost_in_sec": round(result.get("metrics", {}).get("predict_time", 0)),
        "ended_at": _iso(datetime.now(UTC)),
    }  # fmt: skip
    (out / f"{uid}.json").write_text(json.dumps({"data": request}, indent=2))
    return json.dumps({"data": {"uid": uid, "created_at": _iso(started)}}, indent=2)


def failure(error: ValueError) -> str:
    """Their error shape; the message names the field as their body spells it."""
    return json.dumps({"data": None, "status": 400, "statusText": str(error)}, indent=2)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
