"""The rules a request must pass on its own, all before anything is fetched: bounds
(sdcog.common.limits), then the rules that span several inputs (ranges and choices are the
schema's; reference forms were parsed as the request was built), then what this machine can do
with it. checks.py runs them first; script/predict runs them before it starts a server."""

from dataclasses import fields
from urllib.parse import urlsplit

from ..common.limits import MAX_INVERSIONS, MAX_LORAS, MAX_PROMPT_CHARS
from . import schedulers, seeds
from .request import Request

# Requested sides: any multiple of the VAE's 8 (a latent with odd sides is fine: diffusers' UNets
# take it). Sides derived from an image are multiples of 64 (images.snap).
SIDE_STEP = 8


def check_here(request: Request) -> None:
    """What needs no model: the request's own rules (check), then whether this machine can draw
    its noise (seed_device) and its scheduler can take its steps."""
    check(request)
    seeds.check_device(request.seed_device)
    schedulers.check(request.scheduler, request.timestep_spacing, request.num_inference_steps,
                     request.schedule)  # fmt: skip


def check(request: Request) -> None:
    """Every rule below, in order: bounds first (nothing is fetched or tokenised before them)."""
    _check_bounds(request)
    # Ranges and choices are the schema's job; these rules span several inputs.
    if request.mask is not None and request.image is None:
        raise ValueError("mask: a mask needs an image to inpaint; give image as well")
    _check_dependents(request)
    if request.return_control_maps and not request.controlnets:
        raise ValueError(
            "return_control_maps: no ControlNet in this request; set controlnet_1 and "
            "controlnet_1_image, or leave return_control_maps out"
        )
    steps = request.num_inference_steps
    if request.finishing_only:
        _check_finishing_only(request)
    elif request.image is not None and int(steps * request.prompt_strength) < 1:
        raise ValueError(
            "prompt_strength: with an image, prompt_strength x num_inference_steps must be "
            f"at least 1 (got {request.prompt_strength} x {request.num_inference_steps})"
        )
    if request.lora_scales and len(request.lora_scales) != len(request.lora_weights):
        raise ValueError(
            f"lora_scales: give one scale per lora_weights entry (got {len(request.lora_scales)} "
            f"for {len(request.lora_weights)}), or none and set lora_scale"
        )
    if (
        request.controlnets
        and request.refine == "expert_ensemble_refiner"
        and request.mode == "img2img"
    ):
        # diffusers' SDXL ControlNet image-to-image pipelines cannot stop at denoising_end.
        raise ValueError(
            "refine: expert_ensemble_refiner cannot hand over from a ControlNet "
            "image-to-image run; use base_image_refiner"
        )
    _check_image_recipes(request)
    _check_sizing(request)
    _check_finishing(request)
    if any(not -4 <= scale <= 4 for scale in request.lora_scales):
        raise ValueError(
            f"lora_scales: each scale must be from -4 to 4 (got {request.lora_scales})"
        )


def _check_bounds(request: Request) -> None:
    """What a request may ask for (sdcog.common.limits): refused before any download or
    tokenising."""
    for name in ("width", "height"):  # the range is the schema's
        if (side := getattr(request, name)) is not None and side % SIDE_STEP:
            low = side - side % SIDE_STEP
            raise ValueError(
                f"{name}: {side} is not a multiple of {SIDE_STEP} (one latent per 8x8 "
                f"pixels); take {low} or {low + SIDE_STEP}"
            )
    check_prompt_length(request.prompt, "prompt")
    check_prompt_length(request.negative_prompt, "negative_prompt")
    counts = (("lora_weights", request.lora_weights, MAX_LORAS),
              ("textual_inversions", request.textual_inversions, MAX_INVERSIONS))  # fmt: skip
    for name, entries, limit in counts:
        if len(entries) > limit:
            raise ValueError(f"{name}: {len(entries)} entries; at most {limit} per request")
    for reference in request.refs.loras:
        if urlsplit(reference.text).path.endswith(".tar"):  # cog-sdxl's and fofr's lora_weights
            raise ValueError(
                f"lora_weights: {reference.text} is a Replicate fine-tune's .tar; give it as "
                "replicate_weights (lora_weights takes LoRA .safetensors files)"
            )


def _check_dependents(request: Request) -> None:
    """Settings that only mean something with another input are refused without it."""
    defaults = {f.name: f.default for f in fields(request)}
    dependents = []
    if request.ip_adapter_image is None:
        why = "the IP-Adapter steers with ip_adapter_image; give it"
        dependents += [(name, why) for name in ("ip_adapter", "ip_adapter_scale")]
    if request.deepcache_interval == 1:
        why = "DeepCache is off (deepcache_interval 1); set deepcache_interval to 2 or more"
        dependents += [(f"deepcache_{name}", why) for name in ("branch", "start", "end")]
    for name, why in dependents:
        if getattr(request, name) != defaults[name]:
            raise ValueError(f"{name}: {why}, or leave {name} out")
    if request.deepcache_end <= request.deepcache_start:
        raise ValueError(
            f"deepcache_end: must be above deepcache_start (got {request.deepcache_start} to "
            f"{request.deepcache_end})"
        )


def _check_image_recipes(request: Request) -> None:
    sized = request.width is not None or request.height is not None
    if request.outpainting:
        if request.image is None:
            raise ValueError("outpaint_left: outpainting needs an image to extend; give image")
        if sized:
            raise ValueError(
                "width: with outpainting the size is the image's plus the outpaint_* "
                "padding; leave width and height out"
            )
    if request.mask_margin:
        if request.mask is None:
            raise ValueError("mask_margin: inpainting at full resolution needs a mask")
        if request.outpainting:
            raise ValueError("mask_margin: not together with outpainting; set it to 0")
        if sized:
            raise ValueError(
                "width: with mask_margin the output keeps the image's size; leave width and "
                "height out"
            )
    if request.hires_scale > 1:
        if request.image is not None:
            raise ValueError(
                "hires_scale: hires fix is for text-to-image; with an image use "
                "prompt_strength, or mask_margin for inpainting"
            )
        if request.refine != "no_refiner":
            raise ValueError("hires_scale: not together with a refiner; use no_refiner")
        if int(request.hires_steps_run * request.hires_strength) < 1:
            raise ValueError(
                "hires_strength: hires_strength x hires_steps must be at least 1 (got "
                f"{request.hires_strength} x {request.hires_steps_run})"
            )
    elif request.hires_steps is not None:
        raise ValueError("hires_steps: only with hires_scale above 1")


# Face fix inputs that mean nothing without face_fix: every face_fix_* field.
FACE_FIX_SETTINGS = tuple(f.name for f in fields(Request) if f.name.startswith("face_fix_"))
UPSCALE_STEP = 0.05  # upscale's resolution: 1.5 and 2.25 are fine, 1.333... is not


def _check_finishing(request: Request) -> None:
    defaults = {f.name: f.default for f in fields(request)}
    if not request.face_fix:
        for name in FACE_FIX_SETTINGS:
            if getattr(request, name) != defaults[name]:
                raise ValueError(f"{name}: the face fix is off; set face_fix, or leave {name} out")
    elif int(request.num_inference_steps * request.face_fix_strength) < 1:
        raise ValueError(
            "face_fix_strength: face_fix_strength x num_inference_steps must be at least 1 "
            f"(got {request.face_fix_strength} x {request.num_inference_steps})"
        )
    if request.face_fix:
        check_prompt_length(request.face_fix_prompt, "face_fix_prompt")
        check_prompt_length(request.face_fix_negative_prompt, "face_fix_negative_prompt")
    if request.hires_upscaler != defaults["hires_upscaler"] and request.hires_scale == 1:
        raise ValueError(
            "hires_upscaler: the hires fix is off (hires_scale 1); set hires_scale above 1, or "
            "leave hires_upscaler out"
        )
    steps = request.upscale / UPSCALE_STEP
    if abs(steps - round(steps)) > 1e-6:
        raise ValueError(
            f"upscale: {request.upscale} is not a multiple of {UPSCALE_STEP}; take "
            f"{round(steps) * UPSCALE_STEP:g}"
        )


# What prompt_strength 0 (the image as given, finished only) cannot be combined with.
NOT_FINISHING = {
    "mask": "a mask asks for inpainting", "controlnets": "ControlNets steer generation",
    "ip_adapter_image": "the IP-Adapter steers generation", "outpainting": "outpainting generates",
    "refine": "the refiner refines what was generated",
}  # fmt: skip


def _check_finishing_only(request: Request) -> None:
    """prompt_strength 0: nothing is generated, so there must be a finishing stage to run, and
    nothing that only generation uses."""
    given = {"mask": request.mask is not None, "controlnets": bool(request.controlnets),
             "ip_adapter_image": request.ip_adapter_image is not None,
             "outpainting": request.outpainting,
             "refine": request.refine != "no_refiner"}  # fmt: skip
    for name, why in NOT_FINISHING.items():
        if given[name]:
            raise ValueError(
                f"prompt_strength: 0 keeps the image as given and only finishes it, but {why}; "
                "raise prompt_strength"
            )
    if not request.face_fix and request.upscale == 1:
        raise ValueError(
            "prompt_strength: 0 keeps the image as given; ask for face_fix or upscale to "
            "finish it, or raise prompt_strength to change it"
        )
    if request.num_outputs != 1:
        raise ValueError("num_outputs: with prompt_strength 0 there is one image to finish; use 1")


def check_prompt_length(text: str, input_name: str) -> None:
    """A prompt longer than MAX_PROMPT_CHARS is refused before it is tokenised."""
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"{input_name}: {len(text)} characters; at most {MAX_PROMPT_CHARS} (and 600 tokens)"
        )


def _check_sizing(request: Request) -> None:
    """sizing_strategy (fofr's) must name an image the request gives, and no recipe that sets
    the size itself."""
    strategy = request.sizing_strategy
    if strategy == "width_height":
        return
    if request.outpainting or request.mask_margin:
        recipe = "outpainting" if request.outpainting else "mask_margin"
        raise ValueError(
            f"sizing_strategy: with {recipe} the size follows from the image; use width_height"
        )
    given = {"input_image": request.image, "mask_image": request.mask}
    given |= {f"{slot.name}_image": slot.image for slot in request.controlnets}
    if given.get(strategy) is None:
        slot = strategy.removesuffix("_image")
        needs = {"input_image": "image", "mask_image": "mask"}.get(
            strategy, f"{slot} and {strategy}"
        )
        raise ValueError(f"sizing_strategy: {strategy} needs {needs}; give it, or use width_height")
