"""A validated generation request: what predict() hands to the package."""

import difflib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from . import models, netguard, schedulers
from .control_slots import CONTROL_SLOTS, ControlSlot, typed
from .inversions import parse_inversion
from .limits import MAX_INVERSIONS, MAX_LORAS, MAX_PROMPT_CHARS
from .references import check_reference

# Requested sides: any multiple of the VAE's 8 (a latent with odd sides is fine: diffusers' UNets
# take it). Sides derived from an image are multiples of 64 (images.snap).
SIDE_STEP = 8

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
class Request:
    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    num_outputs: int = 1
    scheduler: str = "DPMSolverMultistep"
    timestep_spacing: str = "default"
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    seed: int | None = None
    seed_device: str = "cpu"
    image: Path | None = None
    mask: Path | None = None
    prompt_strength: float = 0.8
    disable_safety_checker: bool = False
    output_format: str = "png"
    output_quality: int = 80
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
    # The model (sdcog/models.py); None: the build's
    base_model: str | None = None
    vae: str | None = None

    @classmethod
    def from_inputs(cls, inputs: dict[str, Any], local_paths: bool = False) -> "Request":
        """The request from predict()'s arguments, matched by name; a name it does not know is
        refused. File inputs must be Cog's downloads, unless `local_paths` (settings:
        ALLOW_LOCAL_INPUT_PATHS)."""
        if unknown := sorted(set(inputs) - INPUT_NAMES):
            close = difflib.get_close_matches(unknown[0], INPUT_NAMES, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"{unknown[0]}: not an input{hint}")
        inputs = {
            name: netguard.input_file(value, name, local_paths)
            if name in FILE_INPUTS and value is not None
            else value
            for name, value in inputs.items()
        }
        if "scheduler" in inputs:  # AUTOMATIC1111's sampler names are aliases of ours
            inputs["scheduler"] = schedulers.canonical(inputs["scheduler"])
        names = {f.name for f in fields(cls)}
        controlnets = (ControlSlot.from_inputs(n, inputs) for n in range(1, CONTROL_SLOTS + 1))
        return cls(
            **typed(cls, {k: v for k, v in inputs.items() if k in names}),
            controlnets=tuple(slot for slot in controlnets if slot is not None),
        )

    def __post_init__(self) -> None:
        self._check_bounds()
        # Ranges and choices are the schema's job; these rules span several inputs.
        if self.mask is not None and self.image is None:
            raise ValueError("mask: a mask needs an image to inpaint; give image as well")
        self._check_dependents()
        if self.return_control_maps and not self.controlnets:
            raise ValueError(
                "return_control_maps: no ControlNet in this request; set controlnet_1 and "
                "controlnet_1_image, or leave return_control_maps out"
            )
        if self.image is not None and int(self.num_inference_steps * self.prompt_strength) < 1:
            raise ValueError(
                "prompt_strength: with an image, prompt_strength x num_inference_steps must be "
                f"at least 1 (got {self.prompt_strength} x {self.num_inference_steps})"
            )
        if self.lora_scales and len(self.lora_scales) != len(self.lora_weights):
            raise ValueError(
                f"lora_scales: give one scale per lora_weights entry (got {len(self.lora_scales)} "
                f"for {len(self.lora_weights)}), or none and set lora_scale"
            )
        if self.controlnets and self.refine == "expert_ensemble_refiner" and self.mode == "img2img":
            # diffusers' SDXL ControlNet image-to-image pipelines cannot stop at denoising_end.
            raise ValueError(
                "refine: expert_ensemble_refiner cannot hand over from a ControlNet "
                "image-to-image run; use base_image_refiner"
            )
        self._check_image_recipes()
        if any(not -4 <= scale <= 4 for scale in self.lora_scales):
            raise ValueError(
                f"lora_scales: each scale must be from -4 to 4 (got {self.lora_scales})"
            )

    def _check_bounds(self) -> None:
        """What a request may ask for (sdcog.limits), and references of a form that can be
        fetched: refused before any download or tokenising."""
        for name in ("width", "height"):  # the range is the schema's
            if (side := getattr(self, name)) is not None and side % SIDE_STEP:
                low = side - side % SIDE_STEP
                raise ValueError(
                    f"{name}: {side} is not a multiple of {SIDE_STEP} (one latent per 8x8 "
                    f"pixels); take {low} or {low + SIDE_STEP}"
                )
        check_prompt_length(self.prompt, "prompt")
        check_prompt_length(self.negative_prompt, "negative_prompt")
        counts = (("lora_weights", self.lora_weights, MAX_LORAS),
                  ("textual_inversions", self.textual_inversions, MAX_INVERSIONS))  # fmt: skip
        for name, entries, limit in counts:
            if len(entries) > limit:
                raise ValueError(f"{name}: {len(entries)} entries; at most {limit} per request")
        for reference in self.lora_weights:
            check_reference(reference, "lora_weights")
        for item in self.textual_inversions:
            check_reference(parse_inversion(item)[1], "textual_inversions")
        if self.replicate_weights:
            check_reference(self.replicate_weights, "replicate_weights")
        for name in ("base_model", "vae"):
            if reference := getattr(self, name):
                models.parse(reference, name)

    def _check_dependents(self) -> None:
        """Settings that only mean something with another input are refused without it."""
        defaults = {f.name: f.default for f in fields(self)}
        dependents = []
        if self.ip_adapter_image is None:
            why = "the IP-Adapter steers with ip_adapter_image; give it"
            dependents += [(name, why) for name in ("ip_adapter", "ip_adapter_scale")]
        if self.deepcache_interval == 1:
            why = "DeepCache is off (deepcache_interval 1); set deepcache_interval to 2 or more"
            dependents += [(f"deepcache_{name}", why) for name in ("branch", "start", "end")]
        for name, why in dependents:
            if getattr(self, name) != defaults[name]:
                raise ValueError(f"{name}: {why}, or leave {name} out")
        if self.deepcache_end <= self.deepcache_start:
            raise ValueError(
                f"deepcache_end: must be above deepcache_start (got {self.deepcache_start} to "
                f"{self.deepcache_end})"
            )

    def _check_image_recipes(self) -> None:
        sized = self.width is not None or self.height is not None
        if self.outpainting:
            if self.image is None:
                raise ValueError("outpaint_left: outpainting needs an image to extend; give image")
            if sized:
                raise ValueError(
                    "width: with outpainting the size is the image's plus the outpaint_* "
                    "padding; leave width and height out"
                )
        if self.mask_margin:
            if self.mask is None:
                raise ValueError("mask_margin: inpainting at full resolution needs a mask")
            if self.outpainting:
                raise ValueError("mask_margin: not together with outpainting; set it to 0")
            if sized:
                raise ValueError(
                    "width: with mask_margin the output keeps the image's size; leave width and "
                    "height out"
                )
        if self.hires_scale > 1:
            if self.image is not None:
                raise ValueError(
                    "hires_scale: hires fix is for text-to-image; with an image use "
                    "prompt_strength, or mask_margin for inpainting"
                )
            if self.refine != "no_refiner":
                raise ValueError("hires_scale: not together with a refiner; use no_refiner")
            if int(self.hires_steps_run * self.hires_strength) < 1:
                raise ValueError(
                    "hires_strength: hires_strength x hires_steps must be at least 1 (got "
                    f"{self.hires_strength} x {self.hires_steps_run})"
                )
        elif self.hires_steps is not None:
            raise ValueError("hires_steps: only with hires_scale above 1")

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

    def check_supported(self, family: str, has_refiner: bool) -> None:
        """Reject what this build cannot do, naming the input."""
        if family != "sdxl":
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
    def mode(self) -> str:
        if self.mask is not None or self.outpainting:
            return "inpaint"
        return "txt2img" if self.image is None else "img2img"


def check_prompt_length(text: str, input_name: str) -> None:
    """A prompt longer than MAX_PROMPT_CHARS is refused before it is tokenised."""
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"{input_name}: {len(text)} characters; at most {MAX_PROMPT_CHARS} (and 600 tokens)"
        )


# predict()'s input names: the request's fields, and each ControlNet slot's (controlnet_N_*).
INPUT_NAMES = frozenset(
    {f.name for f in fields(Request)} - {"controlnets"}
    | {
        name
        for n in range(1, CONTROL_SLOTS + 1)
        for name in (f"controlnet_{n}", *(f"controlnet_{n}_{f.name}" for f in fields(ControlSlot)
                                         if f.name not in ("number", "kind")))
    }
)  # fmt: skip
