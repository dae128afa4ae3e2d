"""The scheduler registry: Replicate's scheduler names mapped to diffusers classes and options.

Every prediction builds a fresh scheduler from the pinned model's original config, so one
request's choice (a Karras option, say) never reaches the next.
"""

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
}


# AUTOMATIC1111's sampler names -> ours: accepted as the scheduler input (predict.py lists them).
A1111_NAMES = {
    "Euler a": "K_EULER_ANCESTRAL", "Euler": "K_EULER", "DPM++ 2M": "DPMSolverMultistep",
    "DPM++ 2M Karras": "KarrasDPM", "Heun": "HeunDiscrete", "DPM2": "KDPM2",
    "DPM2 a": "KDPM2_ANCESTRAL", "LMS": "KLMS", "PLMS": "PNDM", "UniPC": "UniPCMultistep",
}  # fmt: skip


def canonical(name: str) -> str:
    """Our name for a scheduler given by ours or by AUTOMATIC1111's."""
    return A1111_NAMES.get(name, name)


def make_scheduler(name: str, model_config: Mapping[str, Any]) -> SchedulerMixin:
    """A new scheduler of the named kind, configured from the model's original scheduler config."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler: {name!r} is not one of {', '.join(SCHEDULERS)}")
    cls, options = SCHEDULERS[name]
    return cls.from_config(dict(model_config), **options)
