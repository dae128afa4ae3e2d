"""The scheduler registry: Replicate's scheduler names mapped to diffusers classes and options.

Every prediction builds a fresh scheduler from the pinned model's original config, so one
request's choice (a Karras option, say) never reaches the next.
"""

import inspect
from collections.abc import Mapping
from typing import Any

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    IPNDMScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

# name -> (class, options applied over the model's own scheduler config)
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "DDIM": (DDIMScheduler, {}),
    "DDPM": (DDPMScheduler, {}),
    "DPMSolverMultistep": (DPMSolverMultistepScheduler, {}),
    "DPMSolverSinglestep": (DPMSolverSinglestepScheduler, {}),
    "KarrasDPM": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "K_EULER": (EulerDiscreteScheduler, {}),
    "K_EULER_ANCESTRAL": (EulerAncestralDiscreteScheduler, {}),
    "HeunDiscrete": (HeunDiscreteScheduler, {}),
    "KLMS": (LMSDiscreteScheduler, {}),
    # PLMS steps only, as SD ships it: the Runge-Kutta warm-up fails below ~10 steps.
    "PNDM": (PNDMScheduler, {"skip_prk_steps": True}),
    "IPNDM": (IPNDMScheduler, {}),
    "KDPM2": (KDPM2DiscreteScheduler, {}),
    "KDPM2_ANCESTRAL": (KDPM2AncestralDiscreteScheduler, {}),
    "UniPCMultistep": (UniPCMultistepScheduler, {}),
    # Latent consistency: for LCM models and LCM-LoRAs (4-8 steps, guidance 1-2).
    "LCM": (LCMScheduler, {}),
}
# timestep_spacing: "default" keeps the model's; "trailing" is what 1-step SDXL-Turbo needs.
TIMESTEP_SPACINGS = ["default", "leading", "linspace", "trailing"]
# LCMScheduler's original_inference_steps (50): it cannot take more steps than that.
LCM_MAX_STEPS = inspect.signature(LCMScheduler).parameters["original_inference_steps"].default


# AUTOMATIC1111's sampler names -> ours: accepted as the scheduler input (predict.py lists them).
A1111_NAMES = {
    "Euler a": "K_EULER_ANCESTRAL", "Euler": "K_EULER", "DPM++ 2M": "DPMSolverMultistep",
    "DPM++ 2M Karras": "KarrasDPM", "Heun": "HeunDiscrete", "DPM2": "KDPM2",
    "DPM2 a": "KDPM2_ANCESTRAL", "LMS": "KLMS", "PLMS": "PNDM", "UniPC": "UniPCMultistep",
}  # fmt: skip


def canonical(name: str) -> str:
    """Our name for a scheduler given by ours or by AUTOMATIC1111's."""
    return A1111_NAMES.get(name, name)


def check(name: str, spacing: str, steps: int) -> None:
    """What the scheduler cannot do with this request, refused before any work."""
    cls = SCHEDULERS[name][0]
    if spacing != "default" and "timestep_spacing" not in inspect.signature(cls).parameters:
        raise ValueError(f"timestep_spacing: {name} has no timestep spacing; leave it at default")
    if cls is LCMScheduler and steps > LCM_MAX_STEPS:
        raise ValueError(
            f"num_inference_steps: LCM takes at most {LCM_MAX_STEPS} steps (got {steps}); it "
            "needs 4 to 8"
        )


def make_scheduler(
    name: str, model_config: Mapping[str, Any], spacing: str = "default"
) -> SchedulerMixin:
    """A new scheduler of the named kind, configured from the model's original scheduler config
    (and `spacing`, unless "default")."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler: {name!r} is not one of {', '.join(SCHEDULERS)}")
    cls, options = SCHEDULERS[name]
    if spacing != "default":
        options = {**options, "timestep_spacing": spacing}
    return cls.from_config(dict(model_config), **options)
