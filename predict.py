"""Stable Diffusion (1.x, 2.x, SDXL and fine-tunes): text-to-image, image-to-image, inpainting.

The signature of predict() is the public input schema; the sdcog package does the work.
Cog's CLI reads this file statically: every Input() argument is a literal or one of the
module-level literal constants below.
"""

from collections.abc import AsyncIterator
from typing import Optional

from cog import BasePredictor, Input, Path, concurrent

from sdcog.generate import Generator
from sdcog.request.request import Request
from sdcog.serving.runner import OneAtATime
from sdcog.serving.settings import Settings

SCHEDULERS = [
    "DDIM", "DDPM", "DPMSolverMultistep", "DPMSolverSinglestep", "KarrasDPM", "K_EULER",
    "K_EULER_ANCESTRAL", "HeunDiscrete", "KLMS", "PNDM", "IPNDM", "KDPM2", "KDPM2_ANCESTRAL",
    "UniPCMultistep", "LCM", "DPMSolverMultistepSDE", "DPMSolverMultistep3MSDE", "DPMSolverSDE",
]  # fmt: skip
# sdcog.request.schedulers (a test keeps them equal)
TIMESTEP_SPACINGS = ["default", "leading", "linspace", "trailing"]
# sdcog.request.schedulers.SCHEDULES (a test keeps the two equal)
SCHEDULES = ["Automatic", "Karras", "Exponential", "Beta", "SGM Uniform"]
# AUTOMATIC1111's sampler names, aliases of the above (sdcog.request.schedulers.A1111_NAMES; a
# test keeps the two equal).
A1111_SCHEDULERS = [
    "Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "Heun", "DPM2", "DPM2 a", "LMS", "PLMS",
    "UniPC", "DPM++ 2M SDE", "DPM++ 3M SDE", "DPM++ SDE",
]  # fmt: skip
OUTPUT_FORMATS = ["png", "jpg", "webp"]
# fofr's multi-ControlNet models' sizing_strategy: width/height, or the named image's aspect.
SIZING_STRATEGIES = [
    "width_height", "input_image", "mask_image",
    "controlnet_1_image", "controlnet_2_image", "controlnet_3_image",
]  # fmt: skip
SEED_DEVICES = ["cpu", "cuda"]  # sdcog.request.seeds.SEED_DEVICES (a test keeps the two equal)
MAX_PROMPT_CHARS = 20000  # sdcog.common.limits.MAX_PROMPT_CHARS (a test keeps the two equal)
OUTPAINT_SIZES = [
    0, 64, 128, 192, 256, 320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960, 1024,
]  # fmt: skip
OUTPAINT_HELP = "Outpainting: pixels to add on this side of image (the new area is painted)."
REFINERS = ["no_refiner", "expert_ensemble_refiner", "base_image_refiner"]
PROMPT_WEIGHTINGS = ["compel", "a1111", "none"]
IP_ADAPTERS = ["standard", "plus", "plus_face"]
HIRES_UPSCALERS = ["lanczos", "upscaler"]
# "none", then sdcog.request.control_slots.CONTROL_KINDS and KIND_ALIASES (a test keeps them equal).
CONTROLNETS = [
    "none", "canny", "depth", "openpose", "openpose_face", "lineart", "softedge", "scribble",
    "tile",
    # fofr's names (sdcog.request.control_slots.KIND_ALIASES)
    "edge_canny", "depth_leres", "depth_midas", "soft_edge_hed", "soft_edge_pidi", "lineart_anime",
]  # fmt: skip
CONTROLNET_HELP = "ControlNet kind (none: off). A kind needs its weights pinned in this build."
CONTROL_IMAGE_HELP = "The ControlNet's image: a photo to preprocess, or a ready control map."
CONTROL_SCALE_HELP = "How strongly the ControlNet steers (0: not at all)."
CONTROL_START_HELP = "Fraction of the denoising at which the ControlNet starts acting."
CONTROL_END_HELP = "Fraction of the denoising at which the ControlNet stops acting."
CONTROL_PREPROCESS_HELP = (
    "Turn the image into the kind's control map first (edges, depth, pose...); false: the "
    "image already is one."
)
BASE_MODEL_HELP = (
    "Optional: the model to draw with instead of this build's: a Hugging Face "
    "owner/repo[@revision] in diffusers' layout, the URL of a single-file .safetensors "
    "checkpoint, or a civitai AIR id (civitai:<model>@<version>). SD 1.x, 2.x or SDXL base; "
    "cached once fetched."
)
VAE_HELP = (
    "Optional: a VAE to decode with instead of the model's own, in the same forms as base_model "
    "(a repository holding an AutoencoderKL, or a single-file .safetensors VAE)."
)
CONTROL_MODEL_HELP = (
    "Optional: another diffusers-format ControlNet for this slot, as Hugging Face owner/repo or "
    "the URL of its .safetensors weights (config.json beside it)."
)


class Predictor(BasePredictor):
    def setup(self) -> None:
        """Load the pinned weights once: from WEIGHTS_DIR, default weights/ beside this file
        (every setting: sdcog/serving/settings.py)."""
        self.settings = Settings.from_env()
        self.generate = Generator(self.settings.weights_dir, self.settings)
        self.model = OneAtATime(self.settings.status_file)

    # Four slots, so two clients sending back to back never find their last slot still closing;
    # the model itself runs one prediction at a time, the others wait (sdcog/serving/runner.py).
    # An async generator: Cog 0.23.1 sends what it yields when it ends (docs/inputs.md, "Previews").
    @concurrent(max=4)
    async def predict(
        self,
        prompt: str = Input(description="What to draw.", max_length=MAX_PROMPT_CHARS),
        negative_prompt: str = Input(
            description="What to steer away from.", default="", max_length=MAX_PROMPT_CHARS
        ),
        width: Optional[int] = Input(
            description="Output width, a multiple of 8. Default: the model's native size, or "
            "with an image, the image's aspect at the native pixel count.",
            ge=128,
            le=2048,
            default=None,
        ),
        height: Optional[int] = Input(
            description="Output height, a multiple of 8. Default: as for width.",
            ge=128,
            le=2048,
            default=None,
        ),
        sizing_strategy: str = Input(
            description="What sets the size: width_height, or the named image (its aspect at "
            "the model's native size; width and height are then ignored).",
            choices=SIZING_STRATEGIES,
            default="width_height",
        ),
        num_outputs: int = Input(description="How many images.", ge=1, le=10, default=1),
        scheduler: str = Input(
            description="Denoising scheduler (AUTOMATIC1111's sampler names too: Euler a, "
            "DPM++ 2M Karras, ...).",
            choices=SCHEDULERS + A1111_SCHEDULERS,
            default="DPMSolverMultistep",
        ),
        timestep_spacing: str = Input(
            description="How the scheduler spaces its steps; default: the model's own. trailing "
            "is what 1-step SDXL-Turbo needs.",
            choices=TIMESTEP_SPACINGS,
            default="default",
        ),
        schedule: str = Input(
            description="AUTOMATIC1111's schedule type: how the noise levels are spaced "
            "(Automatic: the scheduler's own; Karras, Exponential, Beta: diffusers' sigma "
            "options; SGM Uniform: trailing timesteps).",
            choices=SCHEDULES,
            default="Automatic",
        ),
        num_inference_steps: int = Input(description="Denoising steps.", ge=1, le=500, default=50),
        guidance_scale: float = Input(
            description="Classifier-free guidance scale; at or below 1 guidance is off.",
            ge=0,
            le=30,
            default=7.5,
        ),
        guidance_rescale: float = Input(
            description="diffusers' CFG rescale (0: off): what v-prediction fine-tunes advise "
            "(0.7) against over-exposure with zero-terminal-SNR noise.",
            ge=0,
            le=1,
            default=0.0,
        ),
        seed: Optional[int] = Input(
            description="Random seed; output i uses seed + i. Leave out, or -1, for a random seed.",
            ge=-1,
            le=4294967295,
            default=None,
        ),
        seed_device: str = Input(
            description="Where the noise is drawn: cpu (the same images on every device) or cuda "
            "(the images a CUDA generator gives, as Replicate's stability-ai models and most "
            "diffusers code; needs a GPU).",
            choices=SEED_DEVICES,
            default="cpu",
        ),
        image: Optional[Path] = Input(
            description="Initial image for image-to-image or inpainting.", default=None
        ),
        mask: Optional[Path] = Input(
            description="Inpainting mask, same size as image: white is repainted, black kept.",
            default=None,
        ),
        prompt_strength: float = Input(
            description="With an image: how much to change it (1 repaints it entirely; 0 keeps "
            "it as given, for face_fix and upscale alone).",
            ge=0,
            le=1,
            default=0.8,
        ),
        mask_margin: int = Input(
            description="Inpainting at full resolution: paint only the mask's bounding box plus "
            "this margin, at the model's native size, and paste it back (0: the whole image).",
            ge=0,
            le=256,
            default=0,
        ),
        outpaint_left: int = Input(description=OUTPAINT_HELP, choices=OUTPAINT_SIZES, default=0),
        outpaint_right: int = Input(description=OUTPAINT_HELP, choices=OUTPAINT_SIZES, default=0),
        outpaint_top: int = Input(description=OUTPAINT_HELP, choices=OUTPAINT_SIZES, default=0),
        outpaint_bottom: int = Input(description=OUTPAINT_HELP, choices=OUTPAINT_SIZES, default=0),
        outpaint_blur: int = Input(
            description="Outpainting: width of the blended seam into the original, in pixels.",
            ge=0,
            le=64,
            default=8,
        ),
        hires_scale: float = Input(
            description="Hires fix (text-to-image): first pass at the size divided by this, "
            "upscaled, then refined at full size (1: off).",
            ge=1,
            le=2,
            default=1.0,
        ),
        hires_strength: float = Input(
            description="Hires fix: how much the second pass changes the upscaled image.",
            ge=0,
            le=1,
            default=0.5,
        ),
        hires_steps: Optional[int] = Input(
            description="Hires fix: steps of the second pass (default: num_inference_steps).",
            ge=1,
            le=500,
            default=None,
        ),
        hires_upscaler: str = Input(
            description="Hires fix: how the first pass is enlarged before the second: lanczos "
            "(a resize), or upscaler (this build's trained upscaler, as A1111's Hires upscaler).",
            choices=HIRES_UPSCALERS,
            default="lanczos",
        ),
        face_fix: bool = Input(
            description="Repaint each face at the model's native size, as ADetailer does: find "
            "the faces, inpaint each with face_fix_prompt, paste it back feathered.",
            default=False,
        ),
        face_fix_prompt: str = Input(
            description="Face fix: the prompt for the faces (empty: the prompt).",
            default="",
            max_length=MAX_PROMPT_CHARS,
        ),
        face_fix_negative_prompt: str = Input(
            description="Face fix: the negative prompt for the faces (empty: negative_prompt).",
            default="",
            max_length=MAX_PROMPT_CHARS,
        ),
        face_fix_strength: float = Input(
            description="Face fix: how much each face is repainted (A1111's denoising strength).",
            ge=0.05,
            le=1,
            default=0.4,
        ),
        face_fix_confidence: float = Input(
            description="Face fix: the detector's lowest score that counts as a face.",
            ge=0.05,
            le=1,
            default=0.5,
        ),
        face_fix_padding: int = Input(
            description="Face fix: pixels of context around each face that the repaint sees.",
            ge=8,
            le=256,
            default=32,
        ),
        face_fix_max_faces: int = Input(
            description="Face fix: at most this many faces, the largest first.",
            ge=1,
            le=16,
            default=4,
        ),
        upscale: float = Input(
            description="Enlarge every output this many times (in steps of 0.05) with this "
            "build's trained upscaler, after the face fix (1: off). With an image and "
            "prompt_strength 0, the image itself is finished (upscaled, faces fixed).",
            ge=1,
            le=4,
            default=1.0,
        ),
        ip_adapter_image: Optional[Path] = Input(
            description="IP-Adapter: an image as a prompt (its style and content steer).",
            default=None,
        ),
        ip_adapter_scale: float = Input(
            description="IP-Adapter: how strongly the image steers.", ge=0, le=1.5, default=0.6
        ),
        ip_adapter: str = Input(
            description="IP-Adapter kind: standard, plus (finer detail), plus_face (faces).",
            choices=IP_ADAPTERS,
            default="standard",
        ),
        deepcache_interval: int = Input(
            description="DeepCache: run the UNet in full every this many steps and reuse its "
            "deep features in between (1: off; 3: about 2x faster, slightly different images).",
            ge=1,
            le=5,
            default=1,
        ),
        deepcache_branch: int = Input(
            description="DeepCache: where the reused part starts (0: the most reused and "
            "fastest; higher: more recomputed). SD 1.x/2.x: 0 to 11, SDXL: 0 to 8.",
            ge=0,
            le=11,
            default=0,
        ),
        deepcache_start: float = Input(
            description="DeepCache: the fraction of each pass's steps run in full before "
            "reuse starts (early steps set the composition).",
            ge=0,
            le=1,
            default=0.0,
        ),
        deepcache_end: float = Input(
            description="DeepCache: the fraction of each pass's steps after which every step "
            "runs in full again (late steps set the detail).",
            ge=0,
            le=1,
            default=1.0,
        ),
        disable_safety_checker: bool = Input(
            description="Return images even if the safety checker flags them.", default=False
        ),
        output_format: str = Input(
            description="Image file format.", choices=OUTPUT_FORMATS, default="png"
        ),
        output_quality: int = Input(
            description="Quality of jpg and webp outputs (png is lossless).",
            ge=1,
            le=100,
            default=80,
        ),
        write_metadata: bool = Input(
            description="Write the generation data into each image as AUTOMATIC1111 does (PNG "
            "text chunk `parameters`, or EXIF UserComment), for civitai and A1111's PNG Info.",
            default=True,
        ),
        refine: str = Input(
            description="SDXL only. Refiner: expert_ensemble_refiner finishes the base's "
            "latents from high_noise_frac; base_image_refiner reworks the base image.",
            choices=REFINERS,
            default="no_refiner",
        ),
        high_noise_frac: float = Input(
            description="SDXL only. With expert_ensemble_refiner: the fraction of the steps "
            "that the base model denoises.",
            ge=0,
            le=1,
            default=0.8,
        ),
        refine_steps: Optional[int] = Input(
            description="SDXL only. The refiner's steps (default: num_inference_steps): with "
            "base_image_refiner all of them; with expert_ensemble_refiner its schedule's, of "
            "which it runs those past high_noise_frac.",
            ge=1,
            le=500,
            default=None,
        ),
        apply_watermark: bool = Input(
            description="SDXL only. Embed SDXL's invisible watermark; off leaves pixels as "
            "generated.",
            default=True,
        ),
        prompt_weighting: str = Input(
            description="compel: weighting syntax (word+++, (words)1.3, .blend(), .and()); a1111: "
            "AUTOMATIC1111's ((word)), [word], (word:1.2), BREAK; none: the text as written. All "
            "encode long prompts in 77-token chunks.",
            choices=PROMPT_WEIGHTINGS,
            default="compel",
        ),
        clip_skip: int = Input(
            description="Skip this many of the text encoder's last layers.", ge=0, le=4, default=0
        ),
        lora_weights: list[str] = Input(
            description="LoRAs for this prediction: https URLs of .safetensors files, or "
            "Hugging Face owner/repo (diffusers, Kohya or civitai format). A Replicate "
            "fine-tune's .tar goes in replicate_weights.",
            default=[],
        ),
        lora_scales: list[float] = Input(
            description="One scale per LoRA, -4 to 4. Default: lora_scale for each.", default=[]
        ),
        lora_scale: Optional[float] = Input(
            description="The scale of every LoRA without its own in lora_scales, and of "
            "replicate_weights' LoRA. Default: 1 for lora_weights, 0.6 for replicate_weights "
            "(Replicate's).",
            ge=-4,
            le=4,
            default=None,
        ),
        replicate_weights: Optional[str] = Input(
            description="SDXL only. The URL of a Replicate SDXL LoRA fine-tune's .tar (its LoRA, "
            "and its embeddings for the placeholder its special_params.json names, e.g. TOK).",
            default=None,
        ),
        textual_inversions: list[str] = Input(
            description="Textual inversion embeddings (.safetensors URL or owner/repo), each "
            "as TOKEN=REFERENCE, or REFERENCE when the file names its token.",
            default=[],
        ),
        controlnet_1: str = Input(description=CONTROLNET_HELP, choices=CONTROLNETS, default="none"),
        controlnet_1_image: Optional[Path] = Input(description=CONTROL_IMAGE_HELP, default=None),
        controlnet_1_conditioning_scale: float = Input(
            description=CONTROL_SCALE_HELP, ge=0, le=4, default=1.0
        ),
        controlnet_1_start: float = Input(description=CONTROL_START_HELP, ge=0, le=1, default=0.0),
        controlnet_1_end: float = Input(description=CONTROL_END_HELP, ge=0, le=1, default=1.0),
        controlnet_1_preprocess: bool = Input(description=CONTROL_PREPROCESS_HELP, default=True),
        controlnet_1_model: Optional[str] = Input(description=CONTROL_MODEL_HELP, default=None),
        controlnet_2: str = Input(description=CONTROLNET_HELP, choices=CONTROLNETS, default="none"),
        controlnet_2_image: Optional[Path] = Input(description=CONTROL_IMAGE_HELP, default=None),
        controlnet_2_conditioning_scale: float = Input(
            description=CONTROL_SCALE_HELP, ge=0, le=4, default=1.0
        ),
        controlnet_2_start: float = Input(description=CONTROL_START_HELP, ge=0, le=1, default=0.0),
        controlnet_2_end: float = Input(description=CONTROL_END_HELP, ge=0, le=1, default=1.0),
        controlnet_2_preprocess: bool = Input(description=CONTROL_PREPROCESS_HELP, default=True),
        controlnet_2_model: Optional[str] = Input(description=CONTROL_MODEL_HELP, default=None),
        controlnet_3: str = Input(description=CONTROLNET_HELP, choices=CONTROLNETS, default="none"),
        controlnet_3_image: Optional[Path] = Input(description=CONTROL_IMAGE_HELP, default=None),
        controlnet_3_conditioning_scale: float = Input(
            description=CONTROL_SCALE_HELP, ge=0, le=4, default=1.0
        ),
        controlnet_3_start: float = Input(description=CONTROL_START_HELP, ge=0, le=1, default=0.0),
        controlnet_3_end: float = Input(description=CONTROL_END_HELP, ge=0, le=1, default=1.0),
        controlnet_3_preprocess: bool = Input(description=CONTROL_PREPROCESS_HELP, default=True),
        controlnet_3_model: Optional[str] = Input(description=CONTROL_MODEL_HELP, default=None),
        return_control_maps: bool = Input(
            description="Also return each ControlNet's control map (as preprocessed, or as "
            "given; a PNG named control-<slot>-<kind>-...), after the images.",
            default=False,
        ),
        base_model: Optional[str] = Input(description=BASE_MODEL_HELP, default=None),
        vae: Optional[str] = Input(description=VAE_HELP, default=None),
        preview_every: int = Input(
            description="Every this many denoising steps, a quick preview of each image (a "
            "small JPEG named preview-<output>-step<k>-...) before the images (0: none).",
            ge=0,
            le=500,
            default=0,
        ),
    ) -> AsyncIterator[Path]:
        # Every argument above, by name: sdcog.request.request.Request validates and groups them.
        inputs = {name: value for name, value in locals().items() if name != "self"}
        request = Request.from_inputs(inputs, self.settings.local_input_paths)
        # Previews as they are written (preview_every), then the images and control maps.
        async for path in self.model.stream(
            lambda cancelled, emit: self.generate(request, cancelled, emit).paths
        ):
            yield Path(path)
