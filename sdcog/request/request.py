"""A generation request: what predict() hands to the package, its references to weights parsed
once as it is built (a reference of no known form is refused there, naming its input). The rules
it must pass come later, in one checking step (checks.py)."""

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..common.families import Family
from ..fetch.references import EmbeddingReference, Reference
from ..security import netguard
from . import model_choice, schedulers
from .control_slots import CONTROL_SLOTS, ControlSlot, typed
from .model_choice import ModelReference

# An SD 1.x/2.x build rejects any value of these but their defaults.
SDXL_ONLY = ("refine", "high_noise_frac", "refine_steps", "apply_watermark", "replicate_weights")
# lora_scale when not given: for lora_weights, and for replicate_weights (Replicate's default)
LORA_SCALE, REPLICATE_SCALE = 1.0, 0.6

# Inputs that are files: each must be one Cog downloaded (see netguard.input_file).
FILE_INPUTS = (
    "image", "mask", "ip_adapter_image",
    *(f"controlnet_{n}_image" for n in range(1, CONTROL_SLOTS + 1)),
)  # fmt: skip


@dataclass(frozen=True)
class References:
    """A request's references to weights, typed (a ControlNet slot holds its own model's)."""

    loras: tuple[Reference, ...]
    inversions: tuple[EmbeddingReference, ...]
    replicate_weights: Reference | None
    base_model: ModelReference | None
    vae: ModelReference | None

    @classmethod
    def parse(cls, request: "Request") -> "References":
        def model(name: str) -> ModelReference | None:
            text = getattr(request, name)
            return model_choice.parse(text, name) if text else None

        tuned = request.replicate_weights
        return cls(
            loras=tuple(Reference.parse(text, "lora_weights") for text in request.lora_weights),
            inversions=tuple(map(EmbeddingReference.parse, request.textual_inversions)),
            replicate_weights=Reference.parse(tuned, "replicate_weights") if tuned else None,
            base_model=model("base_model"),
            vae=model("vae"),
        )


@dataclass(frozen=True)
class Request:
    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    sizing_strategy: str = "width_height"  # or the input whose image sets the size (fofr's)
    num_outputs: int = 1
    scheduler: str = "DPMSolverMultistep"
    timestep_spacing: str = "default"
    schedule: str = "Automatic"  # AUTOMATIC1111's schedule type (schedulers.SCHEDULES)
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    guidance_rescale: float = 0.0  # diffusers' CFG rescale (v-prediction models: 0.7)
    seed: int | None = None
    seed_device: str = "cpu"
    image: Path | None = None
    mask: Path | None = None
    prompt_strength: float = 0.8
    disable_safety_checker: bool = False
    output_format: str = "png"
    output_quality: int = 80
    write_metadata: bool = True  # the generation data in each file, as AUTOMATIC1111 writes it
    # SDXL only
    refine: str = "no_refiner"
    high_noise_frac: float = 0.8
    refine_steps: int | None = None
    apply_watermark: bool = True
    # Prompts and adapters
    prompt_weighting: str = "compel"
    clip_skip: int = 0
    lora_weights: tuple[str, ...] = ()
    lora_scales: tuple[float, ...] = ()
    lora_scale: float | None = None
    replicate_weights: str | None = None
    textual_inversions: tuple[str, ...] = ()
    controlnets: tuple[ControlSlot, ...] = ()
    # Outpainting, inpainting at full resolution, hires fix
    outpaint_left: int = 0
    outpaint_top: int = 0
    outpaint_right: int = 0
    outpaint_bottom: int = 0
    outpaint_blur: int = 8
    mask_margin: int = 0
    hires_scale: float = 1.0
    hires_strength: float = 0.5
    hires_steps: int | None = None
    hires_upscaler: str = "lanczos"  # or "upscaler": the build's trained upscaler
    # Finishing: the face fix (ADetailer's recipe), then a trained upscaler
    face_fix: bool = False
    face_fix_prompt: str = ""  # empty: the prompt
    face_fix_negative_prompt: str = ""  # empty: the negative prompt
    face_fix_strength: float = 0.4
    face_fix_confidence: float = 0.5
    face_fix_padding: int = 32
    face_fix_max_faces: int = 4
    upscale: float = 1.0
    # IP-Adapter
    ip_adapter_image: Path | None = None
    ip_adapter_scale: float = 0.6
    ip_adapter: str = "standard"
    # Watching it work
    preview_every: int = 0
    return_control_maps: bool = False
    # Speed
    deepcache_interval: int = 1
    deepcache_branch: int = 0
    deepcache_start: float = 0.0  # the window of each pass's UNet calls where it reuses
    deepcache_end: float = 1.0
    # The model (sdcog/request/model_choice.py); None: the build's
    base_model: str | None = None
    vae: str | None = None
    # Parsed as the request is built, from the references above: not an input.
    refs: References = field(init=False, repr=False, compare=False)

    @classmethod
    def from_inputs(cls, inputs: dict[str, Any], local_paths: bool = False) -> "Request":
        """The request from predict()'s arguments, matched by name; a name it does not know is
        refused. File inputs must be Cog's downloads, unless `local_paths` (settings:
        ALLOW_LOCAL_INPUT_PATHS)."""
        if unknown := sorted(set(inputs) - INPUT_NAMES):
            raise ValueError(f"{unknown[0]}: not an input{name_hint(unknown[0], INPUT_NAMES)}")
        inputs = {
            name: netguard.input_file(value, name, local_paths)
            if name in FILE_INPUTS and value is not None
            else value
            for name, value in inputs.items()
        }
        if "scheduler" in inputs:  # AUTOMATIC1111's sampler names are aliases of ours
            inputs["scheduler"] = schedulers.canonical(inputs["scheduler"])
        names = {f.name for f in fields(cls) if f.init}
        controlnets = (ControlSlot.from_inputs(n, inputs) for n in range(1, CONTROL_SLOTS + 1))
        return cls(
            **typed(cls, {k: v for k, v in inputs.items() if k in names}),
            controlnets=tuple(slot for slot in controlnets if slot is not None),
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "refs", References.parse(self))

    @property
    def outpaint_sides(self) -> tuple[int, int, int, int]:
        return (self.outpaint_left, self.outpaint_top, self.outpaint_right, self.outpaint_bottom)

    @property
    def outpainting(self) -> bool:
        return any(self.outpaint_sides)

    @property
    def hires_steps_run(self) -> int:
        return self.hires_steps or self.num_inference_steps

    @property
    def refine_steps_run(self) -> int:
        """The refiner's steps (base_image_refiner) or its own schedule (expert ensemble)."""
        return self.refine_steps or self.num_inference_steps

    @property
    def scales(self) -> tuple[float, ...]:
        """One scale per LoRA: lora_scales, or lora_scale for each."""
        scale = LORA_SCALE if self.lora_scale is None else self.lora_scale
        return self.lora_scales or (scale,) * len(self.lora_weights)

    @property
    def replicate_scale(self) -> float:
        return REPLICATE_SCALE if self.lora_scale is None else self.lora_scale

    def check_supported(self, family: Family, has_refiner: bool) -> None:
        """Reject what this build cannot do, naming the input."""
        if not family.traits.sdxl_inputs:
            defaults = {f.name: f.default for f in fields(self)}
            for name in SDXL_ONLY:
                if getattr(self, name) != defaults[name]:
                    raise ValueError(
                        f"{name}: only SDXL builds take this input; this one serves an "
                        f"SD 1.x/2.x model (leave {name} out)"
                    )
        if self.refine != "no_refiner" and not has_refiner:
            raise ValueError(
                f"refine: {self.refine} needs a refiner, and this build has none "
                "(pin [refiner] in weights/pins.toml); use no_refiner"
            )

    @property
    def finishing_only(self) -> bool:
        """prompt_strength 0 with an image: nothing is generated; the image, as given, goes
        through the finishing stages (face fix, upscale) only."""
        return self.image is not None and self.prompt_strength == 0

    @property
    def mode(self) -> str:
        if self.mask is not None or self.outpainting:
            return "inpaint"
        return "txt2img" if self.image is None else "img2img"


# predict()'s input names: the request's fields, and each ControlNet slot's (controlnet_N_*).
INPUT_NAMES = frozenset(
    {f.name for f in fields(Request) if f.init} - {"controlnets"}
    | {
        name
        for n in range(1, CONTROL_SLOTS + 1)
        for name in (f"controlnet_{n}", *(f"controlnet_{n}_{f.name}" for f in fields(ControlSlot)
                                         if f.name not in ("number", "kind")))
    }
)  # fmt: skip

# The names AUTOMATIC1111's web UI and API, Forge and civitai's generation data use, for ours:
# a hint when one is given as an input (never accepted under that name).
OTHER_NAMES = {
    "steps": "num_inference_steps", "cfg_scale": "guidance_scale", "cfg": "guidance_scale",
    "sampler": "scheduler", "sampler_name": "scheduler", "sampler_index": "scheduler",
    "denoising_strength": "prompt_strength", "strength": "prompt_strength",
    "batch_size": "num_outputs", "n_iter": "num_outputs", "negative": "negative_prompt",
    "init_images": "image", "init_image": "image", "mask_image": "mask",
    "hr_scale": "hires_scale", "hr_second_pass_steps": "hires_steps",
    "hr_upscaler": "hires_upscaler", "upscaling_resize": "upscale", "scale": "upscale",
    "ad_prompt": "face_fix_prompt", "ad_negative_prompt": "face_fix_negative_prompt",
    "ad_denoising_strength": "face_fix_strength", "ad_confidence": "face_fix_confidence",
}  # fmt: skip


def name_hint(name: str, known: Iterable[str]) -> str:
    """What to say after "NAME: not an input": our name for AUTOMATIC1111's, or the closest."""
    if name in OTHER_NAMES:
        return f" (AUTOMATIC1111's name; here it is {OTHER_NAMES[name]})"
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""
