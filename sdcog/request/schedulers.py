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
    DPMSolverSDEScheduler,
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
    # A1111's DPM++ 2M SDE, DPM++ 3M SDE and DPM++ SDE (the last draws its noise with torchsde's
    # Brownian tree, as k-diffusion's does).
    "DPMSolverMultistepSDE": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
    "DPMSolverMultistep3MSDE": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
    ),
    "DPMSolverSDE": (DPMSolverSDEScheduler, {}),
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
    "DPM++ 2M SDE": "DPMSolverMultistepSDE", "DPM++ 3M SDE": "DPMSolverMultistep3MSDE",
    "DPM++ SDE": "DPMSolverSDE",
}  # fmt: skip
# A1111's samplers no diffusers scheduler runs exactly -> the nearest we have (refused, naming it).
NEAREST = {
    "DPM++ 2S a": "DPMSolverSinglestep (not ancestral)", "DPM adaptive": "DPMSolverMultistep",
    "DPM fast": "DPMSolverMultistep", "Restart": "K_EULER", "DPM++ 2M SDE Heun":
    "DPMSolverMultistepSDE", "Euler CFG++": "K_EULER", "LCM Karras": "LCM",
    "Align Your Steps": "DPMSolverMultistep with schedule Karras",
}  # fmt: skip
# A1111's "Schedule type" -> diffusers' options for it; "Automatic" keeps the scheduler's own.
SCHEDULES: dict[str, dict[str, Any]] = {
    "Automatic": {}, "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True}, "Beta": {"use_beta_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
}  # fmt: skip


def canonical(name: str) -> str:
    """Our name for a scheduler given by ours or by AUTOMATIC1111's; one of A1111's that no
    diffusers scheduler runs exactly is refused, naming the nearest."""
    if name in NEAREST:
        raise ValueError(
            f"scheduler: {name} (AUTOMATIC1111's) has no exact diffusers equivalent; the nearest "
            f"here is {NEAREST[name]}"
        )
    return A1111_NAMES.get(name, name)


def check(name: str, spacing: str, steps: int, schedule: str = "Automatic") -> None:
    """What the scheduler cannot do with this request, refused before any work."""
    cls, own = SCHEDULERS[name]
    parameters = inspect.signature(cls).parameters
    for option in SCHEDULES[schedule]:
        if option not in parameters:
            raise ValueError(f"schedule: {name} has no {schedule} schedule; use Automatic")
    if schedule != "Automatic" and own.get("use_karras_sigmas"):
        raise ValueError(f"schedule: {name} is Karras already; use DPMSolverMultistep with it")
    if schedule == "SGM Uniform" and spacing != "default":
        raise ValueError(
            "schedule: SGM Uniform is trailing timestep spacing; leave timestep_spacing out"
        )
    if spacing != "default" and "timestep_spacing" not in parameters:
        raise ValueError(f"timestep_spacing: {name} has no timestep spacing; leave it at default")
    if cls is LCMScheduler and steps > LCM_MAX_STEPS:
        raise ValueError(
            f"num_inference_steps: LCM takes at most {LCM_MAX_STEPS} steps (got {steps}); it "
            "needs 4 to 8"
        )


def make_scheduler(
    name: str,
    model_config: Mapping[str, Any],
    spacing: str = "default",
    schedule: str = "Automatic",
) -> SchedulerMixin:
    """A new scheduler of the named kind, configured from the model's original scheduler config
    (and `spacing`, unless "default"; A1111's `schedule` type, unless "Automatic")."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler: {name!r} is not one of {', '.join(SCHEDULERS)}")
    cls, options = SCHEDULERS[name]
    options = {**options, **SCHEDULES[schedule]}
    if spacing != "default":
        options = {**options, "timestep_spacing": spacing}
    return cls.from_config(dict(model_config), **options)
