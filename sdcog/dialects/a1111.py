"""AUTOMATIC1111's web API: the JSON bodies of `POST /sdapi/v1/txt2img` and `/sdapi/v1/img2img`
(an img2img body is one with `init_images`) as predict() inputs, answered as A1111 answers:
`{"images": [base64 PNG...], "parameters": the body, "info": a JSON string}`.

Clients send every field with A1111's defaults (webuiapi, A1111's own /docs): a field at its
default is accepted whatever it is; one set to something this package cannot do is refused naming
the field; fields that change nothing here (eta, s_churn, saving) are accepted unused.
"""

import base64
import io
import json
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from ..common import protocol
from ..outputs import infotext
from ..request.schedulers import SCHEDULES, canonical
from . import FieldError, ModelNames

MAX_OUTPUTS = 10  # predict()'s num_outputs
# A1111's schedule names (its API takes them as well as the labels) -> the labels.
SCHEDULE_NAMES = {"automatic": "Automatic", "karras": "Karras", "exponential": "Exponential",
                  "sgm_uniform": "SGM Uniform", "beta": "Beta"}  # fmt: skip
# Fields honoured only at these values (A1111's default first, then what clients send for the
# same), and why. Fields not named here or mapped below change nothing here (saving, eta, s_churn).
ONLY = {
    "subseed_strength": ((0,), "variation seeds (subseed) are not served here"),
    "restore_faces": ((False,), "GFPGAN and CodeFormer are not built here; face_fix repaints "
                                "faces with the model"),
    "tiling": ((False,), "tileable images are not served here"),
    "script_name": ((None, ""), "A1111's scripts do not run here"),
    "hr_resize_x": ((0,), "give hr_scale"), "hr_resize_y": ((0,), "give hr_scale"),
    "hr_checkpoint_name": ((None, "Use same checkpoint", ""),
                           "the second pass runs on the same model"),
    "hr_sampler_name": ((None, "Use same"), "the second pass uses sampler_name"),
    "hr_prompt": (("",), "the second pass uses prompt"),
    "hr_negative_prompt": (("",), "the second pass uses negative_prompt"),
    "inpainting_mask_invert": ((0,), "give the mask white where it is repainted"),
    "image_cfg_scale": ((None, 1.5, 0), "instruct-pix2pix models are not served here"),
    "mask_blur": ((4,), "the mask's edge is blended by the pipeline here"),
    "refiner_checkpoint": ((None, ""), "the refiner is the build's: an SDXL build's refine input"),
}  # fmt: skip
# predict()'s inputs -> A1111's fields, to name the field when the server refuses an input.
FIELDS = {
    "prompt": "prompt", "negative_prompt": "negative_prompt", "num_inference_steps": "steps",
    "guidance_scale": "cfg_scale", "scheduler": "sampler_name", "schedule": "scheduler",
    "seed": "seed", "width": "width", "height": "height", "num_outputs": "batch_size",
    "hires_": "enable_hr", "image": "init_images", "mask": "mask",
    "prompt_strength": "denoising_strength", "mask_margin": "inpaint_full_res_padding",
    "clip_skip": "override_settings.CLIP_stop_at_last_layers",
    "base_model": "override_settings.sd_model_checkpoint", "vae": "override_settings.sd_vae",
    "controlnet_": "alwayson_scripts.controlnet",
}  # fmt: skip


def _fail(path: str, problem: str) -> FieldError:
    return FieldError("a1111", tuple(path.split(".")), problem)


def translate(payload: dict[str, Any], build: ModelNames) -> list[dict[str, Any]]:
    """predict()'s inputs for the body (one prediction), or a FieldError naming the field."""
    if not isinstance(payload, dict):
        raise _fail("(the payload)", "must be a JSON object, an A1111 txt2img or img2img body")
    for name, (accepted, why) in ONLY.items():
        if (value := payload.get(name, accepted[0])) not in accepted:
            raise _fail(name, f"{value!r}: {why}")
    count = payload.get("batch_size", 1) * payload.get("n_iter", 1)
    if count > MAX_OUTPUTS:
        raise _fail("batch_size", f"batch_size x n_iter is {count}; at most {MAX_OUTPUTS} here")
    seed = payload.get("seed", -1)
    inputs: dict[str, Any] = {
        "prompt": payload.get("prompt", ""),
        "negative_prompt": payload.get("negative_prompt") or "",
        "num_inference_steps": payload.get("steps") or 20,
        "guidance_scale": float(payload.get("cfg_scale", 7.0)),
        "num_outputs": count,
        "width": payload.get("width", 512),
        "height": payload.get("height", 512),
        "output_format": "png",
        **({} if seed in (-1, None) else {"seed": seed % 2**32}),
    }
    if payload.get("init_images"):  # img2img: the image's aspect at the native pixel count
        inputs = {k: v for k, v in inputs.items() if k not in ("width", "height")}
    sampler = payload.get("sampler_name") or payload.get("sampler_index") or "Euler a"
    try:
        inputs["scheduler"] = canonical(sampler)
    except ValueError as e:
        raise _fail("sampler_name", str(e).split(": ", 1)[1]) from None
    given = payload.get("scheduler") or "Automatic"
    schedule = SCHEDULE_NAMES.get(given, given)  # A1111's API takes names and labels
    if schedule not in SCHEDULES:
        raise _fail("scheduler", f"{given}: one of {', '.join(SCHEDULES)} here")
    if schedule != "Automatic":
        inputs["schedule"] = schedule
    inputs |= _hires(payload) | _images(payload) | _settings(payload.get("override_settings") or {},
                                                              build)  # fmt: skip
    inputs |= _controlnets(payload.get("alwayson_scripts") or {}, build)
    return [inputs]


def _hires(payload: dict[str, Any]) -> dict[str, Any]:
    if not payload.get("enable_hr"):
        return {}
    scale = payload.get("hr_scale", 2.0)
    if not 1 < scale <= 2:
        raise _fail("hr_scale", f"{scale}: the hires fix scales by more than 1, up to 2 here")
    upscaler = payload.get("hr_upscaler") or "Latent"
    # A1111's width and height are the first pass's; ours are the output's.
    width, height = (round(payload.get(side, 512) * scale / 8) * 8 for side in ("width", "height"))
    inputs: dict[str, Any] = {"hires_scale": float(scale), "width": width, "height": height,
                              "hires_strength": payload.get("denoising_strength", 0.7)}  # fmt: skip
    if "ESRGAN" in upscaler:
        inputs["hires_upscaler"] = "upscaler"
    elif upscaler != "Lanczos":
        print(f"a1111: hr_upscaler {upscaler} runs as Lanczos here", file=sys.stderr)
    if steps := payload.get("hr_second_pass_steps"):
        inputs["hires_steps"] = steps
    return inputs


def _image(field: str, value: str) -> str:
    """A data URI for a base64 image (A1111 takes bare base64 or a data URI)."""
    return value if value.startswith("data:") else f"data:image/png;base64,{value}"


def _images(payload: dict[str, Any]) -> dict[str, Any]:
    images = payload.get("init_images") or []
    if len(images) > 1:
        raise _fail("init_images.1", "one image per request here")
    if not images:
        if payload.get("mask"):
            raise _fail("mask", "a mask needs init_images")
        return {}
    inputs = {"image": _image("init_images.0", images[0]),
              "prompt_strength": payload.get("denoising_strength", 0.75)}  # fmt: skip
    if mask := payload.get("mask"):
        fill = payload.get("inpainting_fill", 1)
        if fill != 1:  # diffusers' inpainting starts the masked area from the image
            print(f"a1111: inpainting_fill {fill} runs as 1 (original) here", file=sys.stderr)
        inputs["mask"] = _image("mask", mask)
        if payload.get("inpaint_full_res"):  # the mask's box at full resolution, pasted back
            inputs["mask_margin"] = max(1, payload.get("inpaint_full_res_padding", 32))
    return inputs


def _settings(settings: dict[str, Any], build: ModelNames) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    if "CLIP_stop_at_last_layers" in settings:  # A1111 counts the last layer as 1
        inputs["clip_skip"] = max(0, int(settings["CLIP_stop_at_last_layers"]) - 1)
    checkpoint = settings.get("sd_model_checkpoint")
    if checkpoint:
        name = checkpoint.split(" [", 1)[0].removesuffix(".safetensors")  # "name [hash]"
        own = (build.pinned("base") or "").rstrip("/").rsplit("/", 1)[-1]
        if name != own and not build.serves("base", checkpoint):
            raise _fail("override_settings.sd_model_checkpoint",
                        f"{checkpoint} is not this build's model ({own}); give base_model a "
                        "repository, URL or AIR id to fetch it")  # fmt: skip
    vae = settings.get("sd_vae")
    if vae not in (None, "Automatic", "None"):
        raise _fail("override_settings.sd_vae", f"{vae}: the model's own VAE only here")
    unknown = sorted(set(settings) - {"CLIP_stop_at_last_layers", "sd_model_checkpoint", "sd_vae"})
    if unknown:
        print(f"a1111: override_settings ignored: {', '.join(unknown)}", file=sys.stderr)
    return inputs


def _controlnets(scripts: dict[str, Any], build: ModelNames) -> dict[str, Any]:
    args = [a for a in (scripts.get("controlnet") or {}).get("args", []) if a.get("enabled", True)]
    if len(args) > 3:
        raise _fail("alwayson_scripts.controlnet.args.3", "at most three ControlNets here")
    inputs: dict[str, Any] = {}
    for index, unit in enumerate(args):
        where = f"alwayson_scripts.controlnet.args.{index}"
        model = (unit.get("model") or "").split(" [", 1)[0]
        kind, _ = build.controlnet(model) if model else (None, False)
        if kind is None:
            raise _fail(f"{where}.model", f"{unit.get('model')!r}: no ControlNet kind known here")
        image = unit.get("image") or unit.get("input_image")
        if isinstance(image, dict):  # {"image": ..., "mask": ...}
            image = image.get("image")
        if not image:
            raise _fail(f"{where}.image", "each ControlNet unit needs its image here")
        slot = f"controlnet_{index + 1}"
        inputs |= {slot: kind, f"{slot}_image": _image(f"{where}.image", image),
                   f"{slot}_preprocess": (unit.get("module") or "none") != "none",
                   f"{slot}_conditioning_scale": float(unit.get("weight", 1.0)),
                   f"{slot}_start": float(unit.get("guidance_start", 0.0)),
                   f"{slot}_end": float(unit.get("guidance_end", 1.0))}  # fmt: skip
    return inputs


def failed(payload: dict[str, Any], index: int, message: str) -> FieldError:
    name, _, problem = message.partition(": ")
    field = next((f for key, f in FIELDS.items() if name.startswith(key)), name)
    return _fail(field, problem or message)


def answer(payload: dict[str, Any], results: list[dict[str, Any]], out: Path) -> str:
    """A1111's response for the finished prediction (its outputs as Cog sends them)."""
    files = [protocol.read_data_uri(uri)[1] for uri in protocol.final_outputs(results[0])]
    seeds = [seed for seed, _ in protocol.output_seeds(results[0].get("logs", ""))]
    return json.dumps(response(payload, files, seeds))


def response(payload: dict[str, Any], files: list[bytes], seeds: list[int]) -> dict[str, Any]:
    """A1111's answer: the images as bare base64, the body, and `info` (a JSON string with each
    image's seed and generation data)."""
    texts = [infotext.read(Image.open(io.BytesIO(data))) or "" for data in files]
    prompt = payload.get("prompt", "")
    info = {"prompt": prompt, "negative_prompt": payload.get("negative_prompt", ""),
            "seed": seeds[0] if seeds else -1, "all_seeds": seeds,
            "all_prompts": [prompt] * len(files), "infotexts": texts}  # fmt: skip
    images = [base64.b64encode(data).decode() for data in files]
    return {"images": images, "parameters": payload, "info": json.dumps(info)}


def failure(error: ValueError) -> str:
    """A1111's error body (FastAPI's HTTPException shape, with the field)."""
    found = {"error": type(error).__name__, "detail": str(error), "body": "", "errors": str(error)}
    return json.dumps(found, indent=2)
