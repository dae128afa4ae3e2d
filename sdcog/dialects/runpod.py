"""RunPod's `stable-diffusion-v1` endpoint jobs, as predict() inputs.

The input and its defaults are those of RunPod's worker (runpod-workers/worker-stable_diffusion_v1):
512x512, 50 steps, guidance 7.5, one image, prompt_strength 0.8, the K-LMS scheduler, prompts as
written (no weighting syntax), PNG. Its mask is the other way round from ours: black is
repainted there, so runpod_worker.py inverts the mask it fetches. As there, images are only
checked for NSFW content with `nsfw: true` (flagged ones are left out), and the noise comes from
a CUDA generator (`torch.Generator("cuda").manual_seed(seed)`), so a job's seed gives the image
RunPod's worker gives (its first one: that worker draws a batch from one generator, ours seeds
output i with seed + i). On a machine without CUDA there is no such generator: the CPU's serves.
"""

from typing import Any

import torch

from . import FieldError, validate

SCHEDULERS = {
    "DDIM": "DDIM", "DDPM": "DDPM", "DPM-M": "DPMSolverMultistep", "DPM-S": "DPMSolverSinglestep",
    "EULER-A": "K_EULER_ANCESTRAL", "EULER-D": "K_EULER", "HEUN": "HeunDiscrete",
    "IPNDM": "IPNDM", "KDPM2-A": "KDPM2_ANCESTRAL", "KDPM2-D": "KDPM2", "PNDM": "PNDM",
    "K-LMS": "KLMS", "KLMS": "KLMS",
}  # fmt: skip
# predict()'s names for RunPod's fields that are named differently.
FIELDS = {"image": "init_image", "disable_safety_checker": "nsfw", "lora_weights": "lora"}


def inputs(payload: dict[str, Any]) -> dict[str, Any]:
    """predict()'s inputs for a job payload ({"input": {...}}); init_image and mask stay URLs."""
    validate(payload, "runpod")
    job = payload["input"]
    result: dict[str, Any] = {
        "prompt": job["prompt"],
        "negative_prompt": job.get("negative_prompt") or "",
        "num_outputs": job.get("num_outputs", 1),
        "num_inference_steps": job.get("num_inference_steps", 50),
        "guidance_scale": job.get("guidance_scale", 7.5),
        "scheduler": SCHEDULERS[job.get("scheduler", "K-LMS")],
        "seed": job.get("seed"),
        "seed_device": "cuda" if torch.cuda.is_available() else "cpu",
        "disable_safety_checker": not job.get("nsfw", False),
        "prompt_weighting": "none",
        "output_format": "png",
    }
    if job.get("init_image"):  # the size follows the image (ours: its aspect, native pixels)
        result |= {"image": job["init_image"], "prompt_strength": job.get("prompt_strength", 0.8)}
    else:
        result |= {"width": job.get("width", 512), "height": job.get("height", 512)}
    if job.get("mask"):
        result["mask"] = job["mask"]
    if job.get("lora"):
        result |= {"lora_weights": [job["lora"]], "lora_scales": [job.get("lora_scale", 1.0)]}
    return result


def field_error(message: str) -> FieldError:
    """An error from the package ("name: problem"), naming RunPod's field for our input."""
    name, _, problem = message.partition(": ")
    return FieldError("runpod", ("input", FIELDS.get(name, name)), problem or message)
