"""Denoising (stage 6): the request's pipelines for its mode, scheduler and ControlNets, then
batch by batch through the base model, and the SDXL refiner when asked for (handing over latents
at high_noise_frac, or reworking the decoded image), or the hires fix's second pass."""

from collections.abc import Callable
from typing import Any

from PIL import Image

from ..common.timings import Timings
from ..models.pipelines import Pipelines
from ..models.upscalers import Upscaler
from ..request import seeds
from ..request.request import Request
from . import hires
from .prompts import Embeddings
from .request_images import Inputs, mode_inputs

# Pixels denoised in one UNet batch: 9 images at 512x512, 4 at 768x768, 1 from 1536x1536 up.
MAX_BATCH_PIXELS = 4 * 768 * 768
# Above this many pixels the VAE decodes in tiles, to bound its memory at large sizes.
TILED_DECODE_PIXELS = 1024 * 1024


def batches(
    request: Request,
    pipelines: Pipelines,
    inputs: Inputs,
    embeds: Embeddings,
    hooks: Callable,
    timings: Timings,
    upscaler: Upscaler | None = None,
) -> list[tuple[int, Image.Image]]:
    """Each batch through the base model (and the refiner, or the hires fix's second pass):
    the outputs' seeds and images. `hooks` run at the end of every step; `upscaler` enlarges
    the hires fix's first pass when hires_upscaler asks for it."""
    steering = inputs.steering
    controlnet = steering.controlnet if steering else None
    pipe = pipelines.get(
        request.mode, request.scheduler, controlnet, request.timestep_spacing, request.schedule
    )
    if inputs.size[0] * inputs.size[1] > TILED_DECODE_PIXELS:
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()
    refiner = None
    if request.refine != "no_refiner":
        refiner = pipelines.get_refiner(
            request.mode, request.scheduler, request.timestep_spacing, request.schedule
        )
    finish = None
    if inputs.first != inputs.size:
        model = upscaler if request.hires_upscaler == "upscaler" else None
        finish = _second_pass(request, pipelines, inputs, model)
    arguments = mode_inputs(request, inputs.image, inputs.mask, inputs.first)
    if steering:
        arguments.update(steering.arguments(pipe))
    if inputs.ip_image:  # every pass of the base model sees it (hires fix: both)
        arguments["ip_adapter_image"] = inputs.ip_image
    per_batch = max(1, MAX_BATCH_PIXELS // (inputs.size[0] * inputs.size[1]))
    results: list[tuple[int, Image.Image]] = []
    with timings.denoising(pipe.vae):
        for start in range(0, len(inputs.seeds), per_batch):
            batch = inputs.seeds[start : start + per_batch]
            if inputs.previews:
                inputs.previews.first_output = start
            denoised = run(request, pipe, refiner, batch, arguments, embeds, hooks)
            if finish:
                denoised = finish(denoised, arguments_of(request, batch, hooks) | embeds.base)
            results.extend(zip(batch, denoised, strict=True))
    return results


def _second_pass(
    request: Request, pipelines: Pipelines, inputs: Inputs, upscaler: Upscaler | None
) -> hires.SecondPass:
    steering = inputs.second_steering
    controlnet = steering and steering.controlnet
    pipe = pipelines.get(
        "img2img", request.scheduler, controlnet, request.timestep_spacing, request.schedule
    )
    extra = steering.arguments(pipe) if steering else {}
    if inputs.ip_image:
        extra["ip_adapter_image"] = inputs.ip_image
    return hires.SecondPass(
        pipe, inputs.size, request.hires_strength, request.hires_steps_run, extra, upscaler
    )


def arguments_of(request: Request, batch: list[int], stop: Callable) -> dict[str, Any]:
    """The arguments every denoising pass of a batch shares."""
    return {
        "callback_on_step_end": stop,
        "num_images_per_prompt": len(batch),
        "num_inference_steps": request.num_inference_steps,
        "guidance_scale": request.guidance_scale,
        "generator": seeds.generators(batch, request.seed_device),
        # Only pipelines that take it are given it: checks.py refuses it for the others.
        **({"guidance_rescale": request.guidance_rescale} if request.guidance_rescale else {}),
    }


REFINER_STRENGTH = 0.3  # base_image_refiner reworks the base's image this much


def check_refine_steps(request: Request) -> None:
    """base_image_refiner must run at least one step at its strength."""
    if int(request.refine_steps_run * REFINER_STRENGTH) < 1:
        raise ValueError(
            f"refine_steps: base_image_refiner refines at strength {REFINER_STRENGTH}, so "
            f"refine_steps (by default num_inference_steps) x {REFINER_STRENGTH} must be at "
            f"least 1 (got {request.refine_steps_run})"
        )


def check_split(scheduler: Any, request: Request) -> None:
    """Both models must get at least one step at high_noise_frac: the base of its
    num_inference_steps, the refiner of its own schedule (refine_steps, by default the same)."""
    cutoff = round(scheduler.config.num_train_timesteps * (1 - request.high_noise_frac))
    scheduler.set_timesteps(request.num_inference_steps)
    base_steps = int((scheduler.timesteps >= cutoff).sum())
    scheduler.set_timesteps(request.refine_steps_run)
    refiner_steps = int((scheduler.timesteps < cutoff).sum())
    if base_steps == 0 or refiner_steps == 0:
        raise ValueError(
            f"high_noise_frac: at {request.high_noise_frac}, {request.num_inference_steps} "
            f"{request.scheduler} steps leave the {'refiner' if refiner_steps == 0 else 'base'} "
            "no step; use more num_inference_steps or another high_noise_frac"
        )


def run(
    request: Request,
    pipe: Any,
    refiner: Any,
    batch: list[int],
    inputs: dict[str, Any],
    embeds: Embeddings,
    stop: Callable,
) -> list[Image.Image]:
    """One batch through the base model, and the refiner if asked for."""
    common = arguments_of(request, batch, stop)
    if refiner is None:
        return pipe(**common, **embeds.base, **inputs).images
    # The refiner gets the base output and, when inpainting, the same mask and size.
    mask = {k: inputs[k] for k in ("mask_image", "width", "height") if "mask_image" in inputs}
    refining = common | {"num_inference_steps": request.refine_steps_run} | embeds.refiner | mask
    if request.refine == "expert_ensemble_refiner":
        # The base denoises the high-noise part and hands its latents to the refiner.
        latents = pipe(
            **common, **embeds.base, **inputs,
            denoising_end=request.high_noise_frac, output_type="latent",
        ).images  # fmt: skip
        return refiner(**refining, image=latents, denoising_start=request.high_noise_frac).images
    # base_image_refiner: the refiner runs image-to-image over the decoded base image.
    base_images = pipe(**common, **embeds.base, **inputs).images
    return refiner(**refining, image=base_images, strength=REFINER_STRENGTH).images
