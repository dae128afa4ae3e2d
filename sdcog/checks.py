"""Every check a request can fail without a download, decoding or annotator, in one place and
each once (as diffusers' check_inputs): what the request asks on its own and of this build, then
what it asks of its model, from the model's configs (a requested base_model's come before its
weights). Nothing is fetched, decoded or loaded before the first part has passed."""

from dataclasses import dataclass
from typing import Any

from .adapters.controlnets import ControlNets
from .adapters.faces import FaceDetector
from .adapters.ip_adapters import IPAdapters
from .common.families import Facts
from .denoise import denoise, prompts
from .denoise.previews import PreviewDecoder
from .models.pipelines import Pipelines
from .models.upscalers import Upscaler
from .request import request_checks
from .request.model_choice import Choice, ModelChoice
from .request.request import Request
from .speed import deepcache


@dataclass
class Checks:
    """What the build serves, to check requests against."""

    pipelines: Pipelines
    previews: PreviewDecoder
    ip_adapters: IPAdapters
    controlnets: ControlNets
    choice: ModelChoice
    upscaler: Upscaler | None
    faces: FaceDetector | None

    def request(self, request: Request) -> Choice:
        """The request on its own and against this build; the models it names, allowed."""
        request_checks.check_here(request)
        choice = Choice(self.choice.resolve(request.refs.base_model),
                        self.choice.resolve(request.refs.vae))  # fmt: skip
        self.previews.check(request.preview_every)
        self._check_finishing(request)
        text_pipe = self.pipelines.base["txt2img"]  # CLIP's tokenizer, as every family's
        for name in ("prompt", "negative_prompt"):
            prompts.check_length(text_pipe, prompts.clean(getattr(request, name)), name)
        if request.ip_adapter_image:
            self.ip_adapters.check(request.ip_adapter)
        if self.pipelines.refiner and request.refine == "expert_ensemble_refiner":
            spacing = request.timestep_spacing
            denoise.check_split(
                self.pipelines.refiner_scheduler(request.scheduler, spacing, request.schedule),
                request,
            )
        if self.pipelines.refiner and request.refine == "base_image_refiner":
            denoise.check_refine_steps(request)
        return choice

    def _check_finishing(self, request: Request) -> None:
        """The face fix and the upscaler need their pinned models."""
        if self.faces is None and request.face_fix:
            raise ValueError(
                "face_fix: this build has no face detector (pin [face_detector] in "
                "weights/pins.toml); leave face_fix out"
            )
        wanted = [("upscale", request.upscale > 1),
                  ("hires_upscaler", request.hires_upscaler == "upscaler")]  # fmt: skip
        for name, asked in wanted:
            if asked and self.upscaler is None:
                raise ValueError(
                    f"{name}: this build has no upscaler (pin [upscaler] in weights/pins.toml); "
                    f"leave {name} out"
                )

    def model(self, request: Request, facts: Facts) -> None:
        """The request against its model, from the model's configs: what only the build's SDXL
        refiner does, the build's ControlNets, IP-Adapters and preview decoder, an inpainting
        model's one mode, DeepCache's branch."""
        refiner = self.pipelines.refiner
        request.check_supported(facts.family, refiner is not None)
        if facts.inpainting and request.mode != "inpaint":
            raise ValueError(
                f"base_model: {facts.name} is an inpainting model (9 input channels): it serves "
                "inpainting only (give image and mask, or outpaint_*)"
            )
        self.controlnets.check(request.controlnets, facts.unet)
        self.previews.check_fits(request.preview_every, facts.family, facts.name)
        if request.ip_adapter_image:
            self.ip_adapters.check_fits(facts.unet)
        unets: list[Any] = [facts.unet]
        if refiner and request.refine != "no_refiner":
            unets.append(refiner["txt2img"].unet.config)
        deepcache.check(unets, request.deepcache_interval, request.deepcache_branch)
        if request.guidance_rescale:
            _check_rescale(request, facts)


def _check_rescale(request: Request, facts: Facts) -> None:
    """diffusers' CFG rescale exists in SD's text-to-image pipeline and SDXL's three, never
    with a ControlNet; the refiner and the hires fix's SD pass are image-to-image."""
    sd = not facts.family.traits.sdxl_inputs
    if request.controlnets:
        why = "diffusers' ControlNet pipelines have no CFG rescale"
    elif sd and (request.image is not None or request.hires_scale > 1):
        why = "SD 1.x/2.x rescales text-to-image only (not image-to-image, inpainting or hires)"
    else:
        return
    raise ValueError(f"guidance_rescale: {why}; leave it at 0")
