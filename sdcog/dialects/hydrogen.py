"""Hydrogen Network's (Crynux's) Stable Diffusion task JSON, as predict() inputs.

`base_model` and `vae` (a Hugging Face id or a file URL) other than the build's own are fetched
for the task (predict()'s base_model and vae). Defaults are the task format's
(crynux-ai/stable-diffusion-task): 512x512, cfg 5, 6 images, seed 0, the safety checker on,
compel's prompt syntax, DPMSolverMultistep; steps by the task's format version (_default_steps).
Weights (`lora.weight`, `controlnet.weight`, `refiner.denoising_cutoff`) are percentages there.
"""

import base64
import binascii
import io
import time
from pathlib import Path
from typing import Any

from PIL import Image

from ..adapters import annotators
from ..common import protocol
from ..request import images
from ..request.schedulers import TIMESTEP_SPACINGS
from . import ModelNames, check_model, validate

# Crynux's preprocess methods -> our ControlNet kinds (each kind has its own annotator).
PREPROCESS = {
    "canny": "canny",
    "depth_midas": "depth", "depth_zoe": "depth", "depth_leres": "depth", "depth_leres++": "depth",
    "openpose": "openpose", "dwpose": "openpose", "openpose_face": "openpose_face",
    "lineart_realistic": "lineart", "lineart_coarse": "lineart",
    "softedge_hed": "softedge", "softedge_hedsafe": "softedge", "softedge_pidinet": "softedge",
    "softedge_pidisafe": "softedge",
    "scribble_hed": "scribble", "scribble_hedsafe": "scribble", "scribble_pidinet": "scribble",
    "scribble_pidisafe": "scribble",
}  # fmt: skip
# Crynux's scheduler methods (diffusers' class names; the format's first drafts without the
# "Scheduler") -> ours.
SCHEDULERS = {
    "DPMSolverMultistepScheduler": "DPMSolverMultistep",
    "EulerAncestralDiscreteScheduler": "K_EULER_ANCESTRAL",
    "LCMScheduler": "LCM",
    "DPMSolverMultistep": "DPMSolverMultistep",
    "EulerAncestralDiscrete": "K_EULER_ANCESTRAL",
}
# task_config.steps when omitted: 25 in format 1.x; 1 from 2.0.0 (SDXL-Turbo's), and a task
# without `version` is of the current format (2.5.0).
DEFAULT_STEPS = {"1": 25}
CURRENT_STEPS = 1
# Crynux's preprocess args (other than canny's) at their defaults: what the annotators here do.
PREPROCESS_DEFAULTS = {"apply_filter": False, "gamma_corrected": False, "thr_a": 0, "thr_b": 0}
HF_ENDPOINT = "https://huggingface.co"
# predict()'s inputs -> the task's fields they come from, for the server's errors.
FIELDS = {
    "prompt": "prompt", "negative_prompt": "negative_prompt", "width": "task_config.image_width",
    "height": "task_config.image_height", "num_inference_steps": "task_config.steps",
    "seed": "task_config.seed", "num_outputs": "task_config.num_images",
    "guidance_scale": "task_config.cfg", "scheduler": "scheduler.method",
    "timestep_spacing": "scheduler.args.timestep_spacing", "lora_weights": "lora.model",
    "lora_scales": "lora.weight", "controlnet_1": "controlnet.model",
    "controlnet_1_model": "controlnet.model", "controlnet_1_image": "controlnet.image_dataurl",
    "controlnet_1_preprocess": "controlnet.preprocess",
    "controlnet_1_conditioning_scale": "controlnet.weight", "refine": "refiner.model",
    "high_noise_frac": "refiner.denoising_cutoff", "refine_steps": "refiner.steps",
    "textual_inversions": "textual_inversion",
    "base_model": "base_model", "vae": "vae",
}  # fmt: skip


def translate(task: dict[str, Any], build: ModelNames) -> list[dict[str, Any]]:
    """A task is one prediction."""
    return [inputs(task, build)]


def failed(task: dict[str, Any], index: int, message: str) -> ValueError:
    """The server's error, naming the task's field its input came from."""
    name, sep, rest = message.partition(": ")
    if sep and name in FIELDS:
        return ValueError(f"hydrogen: {FIELDS[name]}: {rest}")
    return ValueError(f"hydrogen: the prediction failed: {message}")


def answer(task: dict[str, Any], results: list[dict[str, Any]], out: Path) -> str:
    """The images, written to `out`: one path per line."""
    paths = protocol.save(results[0], out, time.strftime("%Y%m%d-%H%M%S"))
    return "\n".join(str(path) for path in paths)


failure = str


def inputs(task: dict[str, Any], build: ModelNames) -> dict[str, Any]:
    """predict()'s inputs for a task, or a ValueError naming the task's field."""
    validate(task, "hydrogen")
    base = task["base_model"]
    base = base if isinstance(base, str) else base["name"]  # the variant is the device's choice
    if task.get("unet") and not build.serves("unet", task["unet"]):
        raise ValueError(
            f"hydrogen: unet: {task['unet']}: a separate UNet is not served here; name a whole "
            "model as base_model"
        )
    config = task["task_config"]
    result: dict[str, Any] = {
        "prompt": task["prompt"],
        "negative_prompt": task.get("negative_prompt", ""),
        "width": config.get("image_width", 512),
        "height": config.get("image_height", 512),
        "num_inference_steps": config.get("steps", _default_steps(task.get("version"))),
        "seed": config.get("seed", 0),
        "num_outputs": config.get("num_images", 6),
        "disable_safety_checker": not config.get("safety_checker", True),
        "guidance_scale": config.get("cfg", 5),
        "prompt_weighting": "compel",
        **_scheduler(task.get("scheduler")),
    }
    # Another model than the build's: fetched for the task (a Hugging Face id or a URL).
    for field, entry, name in (("base_model", "base", base), ("vae", "vae", task.get("vae"))):
        if name and not build.serves(entry, name):
            check_model("hydrogen", field, name)
            result[field] = name
    for side in ("width", "height"):
        if result[side] % 64:
            raise ValueError(
                f"hydrogen: task_config.image_{side}: {result[side]} is not a multiple of 64"
            )
    if lora := task.get("lora"):
        reference = lora["model"]
        if lora.get("weight_file_name"):  # a file in a Hugging Face repository
            reference = f"{HF_ENDPOINT}/{reference}/resolve/main/{lora['weight_file_name']}"
        result |= {"lora_weights": [reference], "lora_scales": [lora.get("weight", 100) / 100]}
    if controlnet := task.get("controlnet"):
        result |= _controlnet(controlnet, build, (result["width"], result["height"]))
    if refiner := task.get("refiner"):
        if not build.serves("refiner", refiner["model"]):
            raise ValueError(
                f"hydrogen: refiner.model: {refiner['model']} is not this build's refiner"
            )
        result |= {
            "refine": "expert_ensemble_refiner",
            "high_noise_frac": refiner.get("denoising_cutoff", 80) / 100,
            "refine_steps": refiner.get("steps", 20),  # the refiner's own schedule, as Crynux's
        }
    if task.get("textual_inversion"):
        result["textual_inversions"] = [task["textual_inversion"]]
    return result


def _default_steps(version: str | None) -> int:
    return DEFAULT_STEPS.get((version or "").split(".")[0], CURRENT_STEPS)


def _scheduler(scheduler: dict[str, Any] | None) -> dict[str, Any]:
    """predict()'s scheduler inputs. Of the method's args, timestep_spacing and (DPM++)
    use_karras_sigmas take effect; any other is refused by name."""
    method = (scheduler or {}).get("method", "DPMSolverMultistepScheduler")
    if method not in SCHEDULERS:
        raise ValueError(
            f"hydrogen: scheduler.method: {method} is not served here ({', '.join(SCHEDULERS)})"
        )
    inputs = {"scheduler": SCHEDULERS[method]}
    args = dict((scheduler or {}).get("args") or {})
    if args.pop("use_karras_sigmas", False):
        if inputs["scheduler"] != "DPMSolverMultistep":
            raise ValueError(
                "hydrogen: scheduler.args.use_karras_sigmas: for DPMSolverMultistep only"
            )
        inputs["scheduler"] = "KarrasDPM"
    if (spacing := args.pop("timestep_spacing", None)) is not None:
        if spacing not in TIMESTEP_SPACINGS[1:]:
            raise ValueError(
                f"hydrogen: scheduler.args.timestep_spacing: {spacing!r} is not one of "
                f"{', '.join(TIMESTEP_SPACINGS[1:])}"
            )
        inputs["timestep_spacing"] = spacing
    for name, value in args.items():
        if value is not None:
            raise ValueError(
                f"hydrogen: scheduler.args.{name}: not honoured here (the model's own config "
                "is used; timestep_spacing and use_karras_sigmas are)"
            )
    return inputs


def _controlnet(
    controlnet: dict[str, Any], build: ModelNames, size: tuple[int, int]
) -> dict[str, Any]:
    model = controlnet["model"]
    preprocess = controlnet.get("preprocess")
    if preprocess and preprocess["method"] not in PREPROCESS:
        raise ValueError(
            f"hydrogen: controlnet.preprocess.method: {preprocess['method']} is not served "
            f"here ({', '.join(PREPROCESS)})"
        )
    # The annotator's kind; for a ready control map, the model's.
    kind, own = build.controlnet(model, PREPROCESS[preprocess["method"]] if preprocess else None)
    if kind is None:
        raise ValueError(
            f"hydrogen: controlnet.model: cannot tell which kind of control {model} is; give "
            "controlnet.preprocess"
        )
    image = controlnet["image_dataurl"]
    if not image.startswith("data:"):  # bare base64
        image = f"data:image/png;base64,{image}"
    picture = _read_image(image, "controlnet.image_dataurl")
    annotate = bool(preprocess)
    if thresholds := _preprocess_args(preprocess):  # canny's, made here: the server's are fixed
        edges = annotators.canny(picture.resize(size, Image.Resampling.LANCZOS), thresholds)
        image, annotate = _data_uri(edges), False
    slot = {
        "controlnet_1": kind,
        "controlnet_1_image": image,
        "controlnet_1_conditioning_scale": controlnet.get("weight", 70) / 100,
        "controlnet_1_preprocess": annotate,
    }
    if not own:
        slot["controlnet_1_model"] = model
    return slot


def _preprocess_args(preprocess: dict[str, Any] | None) -> tuple[int, int] | None:
    """Canny thresholds other than the server's annotator's, or None. Other methods' args take
    effect at their defaults, which are what runs here; any other value is refused by name."""
    args = (preprocess or {}).get("args") or {}
    if preprocess and preprocess["method"] == "canny":
        thresholds = (args.get("low_threshold", 100), args.get("high_threshold", 200))
        return None if thresholds == annotators.CANNY_THRESHOLDS else thresholds
    for name, value in args.items():
        if value != PREPROCESS_DEFAULTS.get(name):
            raise ValueError(
                f"hydrogen: controlnet.preprocess.args.{name}: {value!r} is not honoured here "
                f"(the annotator runs as with {PREPROCESS_DEFAULTS.get(name)!r})"
            )
    return None


def _read_image(uri: str, field: str) -> Image.Image:
    """A data URL's image (decoded as the server decodes inputs, within its pixel bounds), or a
    refusal naming its field before any server starts (Cog's own: `Incorrect padding`)."""
    try:
        data = base64.b64decode(uri.partition(",")[2], validate=True)
    except binascii.Error as e:
        raise ValueError(f"hydrogen: {field}: not base64 ({e})") from None
    try:
        return images.read_image(io.BytesIO(data), field)
    except ValueError as e:
        raise ValueError(f"hydrogen: {field}: not an image (PNG, JPEG, WebP, ...): {e}") from None


def _data_uri(image: Image.Image) -> str:
    return protocol.data_uri(images.encode_image(image, "png", 0))
