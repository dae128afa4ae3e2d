"""Runware's task arrays: each `imageInference` and `imageUpscale` task as predict() inputs,
answered as Runware does. An imageUpscale task is its inputImage finished only (prompt_strength
0) with upscale = upscaleFactor: the build's trained upscaler.

A payload is a JSON array of tasks; each imageInference task is one prediction, and the answer is
`{"data": [...]}` with one entry per image (taskType, taskUUID, imageUUID, imageURL |
imageDataURI | imageBase64Data, seed, NSFWContent when checkNSFW). Errors are Runware's
`{"errors": [{code, message, parameter, taskType, taskUUID}]}`.

Defaults are Runware's: 20 steps, CFGScale 7, one result, JPG at quality 95, URL output, strength
0.8, no prompt weighting, no NSFW check. `model` and `vae` other than the build's own (its
repository, or an AIR id its pin lists under `air`) are fetched for the task when they are
civitai AIR ids, Hugging Face repositories or URLs (predict()'s base_model and vae);
`refiner.model` and a ControlNet's `model` must name what the build pins.
There is no image host here: outputType URL answers with file:// URLs of the files written.
"""

import json
import sys
import uuid
from pathlib import Path
from typing import Any

from ..common import protocol
from ..request.schedulers import A1111_NAMES
from . import FieldError, ModelNames, check_model, validate
from . import runware_accelerator as accelerator
from .runware_guides import AIR, controlnet, fail, fraction, image_input, ip_adapter

STEPS, CFG, STRENGTH = 20, 7, 0.8
MAX_OUTPUTS = 10  # predict()'s num_outputs
# Delivery fields accepted and not honoured, and why (the answer says so on stderr).
IGNORED = {"ttl": "no image host here: the files stay in the output folder",
           "includeCost": "nothing is charged here"}  # fmt: skip
HIRES_SCALE = 1.5  # first pass at 2/3 of the requested size
# Runware's scheduler names (diffusers class names and A1111's) -> ours; "Default": the model's.
SCHEDULERS = {
    "DDIMScheduler": "DDIM", "DDIM": "DDIM", "DDPMScheduler": "DDPM",
    "DPMSolverMultistepScheduler": "DPMSolverMultistep",
    "DPMSolverSinglestepScheduler": "DPMSolverSinglestep",
    "EulerAncestralDiscreteScheduler": "K_EULER_ANCESTRAL", "EulerDiscreteScheduler": "K_EULER",
    "HeunDiscreteScheduler": "HeunDiscrete", "KDPM2DiscreteScheduler": "KDPM2",
    "KDPM2AncestralDiscreteScheduler": "KDPM2_ANCESTRAL", "LMSDiscreteScheduler": "KLMS",
    "PNDMScheduler": "PNDM", "IPNDMScheduler": "IPNDM",
    "UniPCMultistepScheduler": "UniPCMultistep", "LCMScheduler": "LCM", "LCM": "LCM",
    **A1111_NAMES,
}  # fmt: skip
# predict() inputs -> the Runware field they came from, to name it when the server refuses one.
FIELDS = {
    "prompt": "positivePrompt", "negative_prompt": "negativePrompt", "num_outputs": "numberResults",
    "num_inference_steps": "steps", "guidance_scale": "CFGScale", "image": "seedImage",
    "mask": "maskImage", "prompt_strength": "strength", "clip_skip": "clipSkip",
    "prompt_weighting": "promptWeighting", "lora_weights": "lora", "lora_scales": "lora",
    "disable_safety_checker": "checkNSFW", "output_format": "outputFormat",
    "output_quality": "outputQuality", "refine": "refiner", "high_noise_frac": "refiner",
    "controlnet_": "controlNet", "ip_adapter": "ipAdapters", "outpaint_": "outpaint",
    "deepcache_": "acceleratorOptions", "hires_": "advancedFeatures.hiresFix",
    "base_model": "model", "vae": "vae", "textual_inversions": "embeddings",
}  # fmt: skip
# The same, for an imageUpscale task.
UPSCALE_FIELDS = {"image": "inputImage", "upscale": "upscaleFactor",
                  "prompt_strength": "inputImage", "output_format": "outputFormat",
                  "output_quality": "outputQuality"}  # fmt: skip


def translate(payload: list[dict[str, Any]], build: ModelNames) -> list[dict[str, Any]]:
    """predict()'s inputs for each imageInference and imageUpscale task, or a FieldError naming
    the field."""
    try:
        validate(payload, "runware")
    except FieldError as e:
        index, *path = e.path or (None,)
        raise _error(payload[index] if isinstance(index, int) else {}, path, e.problem) from None
    result = []
    for task in _prediction_kinds(payload):
        if task["taskType"] == "imageUpscale":
            result.append(_upscale_inputs(task))
            continue
        try:
            inputs = _inputs(task, build)
        except FieldError as e:
            raise _error(task, e.path, e.problem) from None
        for start, count in _parts(task):  # numberResults over 10: several predictions
            part = inputs | {"num_outputs": count}
            if "seed" in inputs:
                part["seed"] = (inputs["seed"] + start) % 2**32
            result.append(part)
    return result


def failed(payload: list[dict[str, Any]], index: int, message: str) -> FieldError:
    """The server's error for prediction `index`, naming the Runware field its input came from."""
    name = message.split(":", 1)[0]
    task = _prediction_tasks(payload)[index]
    fields = UPSCALE_FIELDS if task["taskType"] == "imageUpscale" else FIELDS
    field = next((f for key, f in fields.items() if name.startswith(key)), name)
    return _error(task, [field], message)


def answer(payload: list[dict[str, Any]], results: list[dict[str, Any]], out: Path) -> str:
    data = []
    for task in _prediction_kinds(payload):
        for field, why in _ignored(task):
            print(f"runware: {field} ignored ({why})", file=sys.stderr)
    for task, result in zip(_prediction_tasks(payload), results, strict=True):
        images = iter(protocol.final_outputs(result))
        for seed, flagged in protocol.output_seeds(result.get("logs", "")):
            entry = {
                "taskType": task["taskType"],
                "taskUUID": task["taskUUID"],
                "imageUUID": str(uuid.uuid4()),
            }
            if task["taskType"] == "imageInference":  # an upscale's seed means nothing
                entry["seed"] = seed
            if _checks_nsfw(task):
                entry["NSFWContent"] = flagged  # a flagged image is never returned
            if not flagged:
                entry |= _image(next(images), task.get("outputType", "URL"), entry, out)
            data.append(entry)
    return json.dumps({"data": data}, indent=2)


def failure(error: ValueError) -> str:
    """Runware's error shape; `parameter` is the field, as the payload spells it."""
    found = {"code": "invalidParameter", "message": str(error)}
    if isinstance(error, FieldError):
        found |= {
            "parameter": error.field,
            "taskType": error.kind or "imageInference",
            "taskUUID": error.task,
        }
    return json.dumps({"errors": [found]}, indent=2)


def _checks_nsfw(task: dict[str, Any]) -> bool:
    """checkNSFW, or the newer `safety` object (checkContent, or a mode other than none)."""
    safety = task.get("safety") or {}
    return bool(
        task.get("checkNSFW") or safety.get("checkContent") or safety.get("mode", "none") != "none"
    )


def _parts(task: dict[str, Any]) -> list[tuple[int, int]]:
    """(first output, outputs) of each prediction a task runs as: predict() makes at most
    MAX_OUTPUTS, Runware asks for up to 20."""
    wanted = task.get("numberResults", 1)
    return [(start, min(MAX_OUTPUTS, wanted - start)) for start in range(0, wanted, MAX_OUTPUTS)]


def _prediction_tasks(payload: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The task of each prediction, in the order translate() gives them."""
    return [task for task in _prediction_kinds(payload) for _ in _parts(task)]


def _prediction_kinds(payload: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tasks that run as predictions (an authentication task does not)."""
    return [task for task in payload if task["taskType"] in ("imageInference", "imageUpscale")]


def _error(task: dict[str, Any], path: Any, problem: str) -> FieldError:
    return FieldError("runware", tuple(path), problem, task.get("taskUUID"), task.get("taskType"))


def _upscale_inputs(task: dict[str, Any]) -> dict[str, Any]:
    """An imageUpscale task: its image finished only, enlarged by the build's upscaler. Runware
    checks no upscale for NSFW content; neither is it here."""
    return {
        "prompt": "",
        "image": image_input("inputImage", task["inputImage"]),
        "prompt_strength": 0,
        "upscale": task["upscaleFactor"],
        "output_format": task.get("outputFormat", "JPG").lower().replace("jpeg", "jpg"),
        "output_quality": task.get("outputQuality", 95),
        "disable_safety_checker": True,
    }


def _model(task: dict[str, Any], field: str, entry: str, build: ModelNames) -> dict[str, str]:
    """predict()'s base_model or vae for `field`: none for the build's own, else the name to
    fetch, which must be one this package can fetch."""
    name = task.get(field)
    if name is None or build.serves(entry, name):
        return {}
    match = AIR.match(name)
    if match and match["source"] != "civitai":
        own = ", ".join(build.names.get(entry, ())) or "none"
        raise fail(
            field,
            f"{name} is not this build's {'model' if field == 'model' else 'VAE'} ({own}), and "
            "only civitai AIR ids, Hugging Face owner/repo and URLs of .safetensors files can "
            "be fetched here",
        )
    check_model("runware", field, name)
    return {"base_model" if field == "model" else "vae": name}


def _inputs(task: dict[str, Any], build: ModelNames) -> dict[str, Any]:
    steps = task.get("steps", STEPS)
    inputs: dict[str, Any] = {
        "prompt": task["positivePrompt"],
        "negative_prompt": task.get("negativePrompt", ""),
        "num_inference_steps": steps,
        "guidance_scale": task.get("CFGScale", CFG),
        "output_format": task.get("outputFormat", "JPG").lower().replace("jpeg", "jpg"),
        "output_quality": task.get("outputQuality", 95),
        "disable_safety_checker": not _checks_nsfw(task),
        "clip_skip": task.get("clipSkip", 0),
        "prompt_weighting": {"compel": "compel", "sdEmbeds": "a1111"}.get(
            task.get("promptWeighting"), "none"
        ),
        **_model(task, "model", "base", build),
        **_model(task, "vae", "vae", build),
    }
    for field in ("width", "height"):
        if field in task:
            inputs[field] = task[field]
    if "seed" in task:  # Runware's go up to 2^63 - 1, ours to 2^32 - 1
        inputs["seed"] = task["seed"] % 2**32
    if task.get("scheduler", "Default") != "Default":
        if task["scheduler"] not in SCHEDULERS:
            raise fail(
                "scheduler",
                f"{task['scheduler']} is not served here; one of Default, {', '.join(SCHEDULERS)}",
            )
        inputs["scheduler"] = SCHEDULERS[task["scheduler"]]
    nested = task.get("inputs") or {}  # the newer reference's place for them
    for name, ours in (("seedImage", "image"), ("maskImage", "mask")):
        field = f"inputs.{name}" if name in nested else name
        if (value := nested.get(name, task.get(name))) is not None:
            inputs[ours] = image_input(field, value)
    if "image" in inputs:
        inputs["prompt_strength"] = task.get("strength", STRENGTH)
    if outpaint := task.get("outpaint"):
        # Runware's width/height are the final size; ours follows from the image and the sides.
        inputs = {k: v for k, v in inputs.items() if k not in ("width", "height")}
        inputs |= {
            f"outpaint_{side}": outpaint[side]
            for side in ("top", "right", "bottom", "left", "blur")
            if side in outpaint
        }
    for index, lora in enumerate(task.get("lora", [])):
        match = AIR.match(lora["model"])
        if match and match["source"] != "civitai":
            raise fail(
                f"lora.{index}.model",
                f"{lora['model']}: only civitai AIR ids, https "
                "URLs and Hugging Face owner/repo can be fetched here",
            )
        inputs.setdefault("lora_weights", []).append(lora["model"])
        inputs.setdefault("lora_scales", []).append(lora.get("weight", 1.0))
    for index, control in enumerate(task.get("controlNet", [])):
        inputs |= controlnet(index, control, steps, build)
    if adapters := task.get("ipAdapters"):
        inputs |= ip_adapter(adapters, build)
    for index, embedding in enumerate(task.get("embeddings", [])):
        if embedding.get("weight", 1) != 1:
            raise fail(f"embeddings.{index}.weight", "embeddings apply at weight 1 here")
        inputs.setdefault("textual_inversions", []).append(embedding["model"])
    inputs |= accelerator.deepcache(task.get("acceleratorOptions") or {}, steps)
    features = task.get("advancedFeatures") or {}
    if task.get("hiresFix") or features.get("hiresFix") or features.get("hiresfix"):
        inputs["hires_scale"] = HIRES_SCALE
    if refiner := task.get("refiner"):
        if not build.serves("refiner", refiner["model"]):
            raise fail("refiner.model", f"{refiner['model']} is not this build's refiner")
        start = fraction(refiner, "startStep", steps, default=0.8)
        inputs |= {"refine": "expert_ensemble_refiner", "high_noise_frac": start}
    return inputs


def _ignored(task: dict[str, Any]) -> list[tuple[str, str]]:
    """The fields a task gives that change nothing here, and why."""
    found = [(field, why) for field, why in IGNORED.items() if field in task]
    return found + accelerator.ignored(task.get("acceleratorOptions") or {})


def _image(uri: str, output_type: str, entry: dict[str, Any], out: Path) -> dict[str, str]:
    if output_type == "dataURI":
        return {"imageDataURI": uri}
    if output_type == "base64Data":
        return {"imageBase64Data": uri.split(",", 1)[1]}
    out.mkdir(parents=True, exist_ok=True)
    extension, data = protocol.read_data_uri(uri)
    path = out / f"{entry['imageUUID']}.{extension}"
    path.write_bytes(data)
    return {"imageURL": path.resolve().as_uri()}
