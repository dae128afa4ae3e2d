"""Request -> pipeline -> images: one prediction from start to files on disk."""

import functools
import threading
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from PIL import Image

from . import (
    deepcache,
    denoise,
    errors,
    hires,
    memory,
    prompts,
    protocol,
    request_images,
    runner,
    seeds,
    torch_compile,
)
from .checks import Checks
from .controlnets import ControlNets
from .downloads import AdapterCache
from .families import Facts
from .ip_adapters import IPAdapters
from .loaded_models import LoadedModels, Model
from .loras import WarmLoras
from .outputs import Encoding, Generation, OutputFolders
from .patches import Patches
from .pipelines import Pipelines, device_and_dtype
from .previews import PreviewDecoder, PreviewStream
from .request import Request
from .safety import SafetyChecker
from .settings import Settings
from .timings import SETUP_STAGES, Timings
from .watermark import apply_watermark

# Pixels denoised in one UNet batch: 9 images at 512x512, 4 at 768x768, 1 from 1536x1536 up.
MAX_BATCH_PIXELS = 4 * 768 * 768
# Above this many pixels the VAE decodes in tiles, to bound its memory at large sizes.
TILED_DECODE_PIXELS = 1024 * 1024


class Generator:
    """Holds the loaded model; each call runs one request and returns its image files."""

    def __init__(self, weights_dir: Path, settings: Settings | None = None) -> None:
        """The model at weights_dir; settings (default: the environment's) for the rest."""
        self.weights_dir, self.settings = weights_dir, settings or Settings.from_env()
        memory.reuse_freed_memory()
        setup = Timings(SETUP_STAGES, "setup")
        with setup.stage("pipelines"):
            self.pipelines = Pipelines.load(weights_dir, self.settings.fast_path)
        base = self.pipelines.base["txt2img"]
        with setup.stage("safety"):
            _, dtype = device_and_dtype()
            self.safety = SafetyChecker.load(weights_dir / "safety", self.pipelines.device, dtype)
        self.cache = AdapterCache(self.settings)
        self.loras = WarmLoras(base)
        with setup.stage("controlnets"):
            self.controlnets = ControlNets(
                weights_dir, self.pipelines.family, base.unet, self.cache
            )
        with setup.stage("ip_adapters"):
            self.ip_adapters = IPAdapters.load(
                weights_dir, self.pipelines.family, self.pipelines.base
            )
        with setup.stage("previews"):
            self.previews = PreviewDecoder.load(
                weights_dir, self.pipelines.family, self.pipelines.device, dtype
            )
        with setup.stage("compile"):  # on CUDA unless SDCOG_COMPILE=0
            refiner = self.pipelines.refiner and self.pipelines.refiner["txt2img"]
            mode = self.settings.compile_mode
            cache_dir = self.settings.compile_cache_dir or weights_dir / "compile-cache"
            torch_compile.compile_unets(
                base, refiner, self.pipelines.native_size, mode, cache_dir,
                self.settings.fast_path, self.settings.compile_regional,
            )  # fmt: skip
        self.patches = Patches(self.cache, self.ip_adapters, mode)
        vae = weights_dir / "vae" if (weights_dir / "vae/config.json").exists() else None
        facts = Facts.of(weights_dir / "base", "base_model", "the build's model", vae)
        pinned = Model("the build's model", self.pipelines, self.loras, facts, weights_dir / "base")
        self.models = LoadedModels(pinned, self.ip_adapters, self.settings, weights_dir)
        self.checks = Checks(
            self.pipelines, self.previews, self.ip_adapters, self.controlnets, self.models.choice
        )
        print(setup.line())
        self.outputs = OutputFolders()

    def __call__(
        self,
        request: Request,
        cancelled: threading.Event | None = None,
        emit: Callable[[Path], None] | None = None,
    ) -> Generation:
        """The request's images; `cancelled`, once set, stops it at the next step; `emit` gets
        each preview file as it is written (preview_every). A failure is raised as the client
        may see it (errors.public)."""
        failure: Exception | None = None
        try:
            generation = self._generate(request, cancelled, emit or (lambda path: None))
        except runner.PredictionCancelledError:
            failure = runner.PredictionCancelledError("cancelled")
        except Exception as e:
            failure = errors.public(e, [self.weights_dir, self.cache.root, self.models.files.root])
        # Raised here, outside the except blocks: what the caller keeps of a failure does not
        # hold the original's traceback, whose frames hold decoded images and tensors.
        memory.give_back()
        if failure is not None:
            raise failure
        return generation

    def _generate(
        self, request: Request, cancelled: threading.Event | None, emit: Callable[[Path], None]
    ) -> Generation:
        choice = self.checks.request(request)
        fits = functools.partial(self.checks.model, request)
        with self.models.chosen(choice, fits, cancelled) as model:
            return self._run(request, model, cancelled, emit)

    def _run(
        self,
        request: Request,
        model: Model,
        cancelled: threading.Event | None,
        emit: Callable[[Path], None],
    ) -> Generation:
        pipelines = model.pipelines
        unet = pipelines.base["txt2img"].unet
        timings = Timings()
        with timings.stage("read"):
            picture, image, mask, control_images, ip_image = request_images.read(request)
        size = request_images.size(request, pipelines.native_size, image, mask, control_images)
        seed = seeds.resolve_seed(request.seed)
        output_seeds = seeds.output_seeds(seed, request.num_outputs)
        first = hires.first_size(size, request.hires_scale) if request.hires_scale > 1 else size
        steering = self.controlnets.prepare(
            request.controlnets, control_images, first, unet.config, cancelled
        )
        controlnet = steering.controlnet if steering else None
        pipe = pipelines.get(request.mode, request.scheduler, controlnet, request.timestep_spacing)
        if size[0] * size[1] > TILED_DECODE_PIXELS:
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()
        refiner = None
        if request.refine != "no_refiner":
            refiner = pipelines.get_refiner(
                request.mode, request.scheduler, request.timestep_spacing
            )
            steps = request.refine_steps_run
            detail = (f"the last {1 - request.high_noise_frac:.2f} of {steps} steps"
                      if request.refine == "expert_ensemble_refiner"
                      else f"{steps} steps at strength 0.3")  # fmt: skip
            print(f"refine: {request.refine}, {detail}")
        hires_fix = first != size
        stage = " (hires fix: first pass)" if hires_fix else ""
        print(f"{request.mode} {first[0]}x{first[1]}{stage}, {request.scheduler}, seed {seed}")
        finish = (
            self._second_pass(request, pipelines, control_images, ip_image, size, cancelled)
            if hires_fix
            else None
        )

        inputs = request_images.mode_inputs(request, image, mask, first)
        if steering:
            inputs.update(steering.arguments(pipe))
        if ip_image:  # every pass of the base model sees it (hires fix: both)
            inputs["ip_adapter_image"] = ip_image
        ip_adapter = request.ip_adapter if ip_image else None
        per_batch = max(1, MAX_BATCH_PIXELS // (size[0] * size[1]))
        stop = runner.stop_if_set(cancelled or threading.Event())
        folder, token = self.outputs.open()
        previews = None
        if request.preview_every:
            previews = PreviewStream(self.previews, request.preview_every, folder, token, emit)
            stop = previews.callback(stop)
        results: list[tuple[int, Image.Image]] = []
        text_pipe = pipelines.base["txt2img"]  # its components are every mode's
        with ExitStack() as loaded:  # what the request changes: undone when it closes
            with timings.stage("adapters"):
                patched = self.patches.applied(
                    loaded, request, model, ip_adapter, refiner, cancelled
                )
            stop = deepcache.step_end(patched.deepcache, stop)
            zeros = refiner is not None and refiner.config.force_zeros_for_empty_prompt
            with timings.stage("prompts"):
                embeds = prompts.encode(
                    text_pipe, pipelines.family, patched.prompt, request.negative_prompt,
                    request.prompt_weighting, request.clip_skip, patched.tokenizers,
                    refiner_zeros=zeros,
                )  # fmt: skip
            with timings.denoising(pipe.vae):
                for start in range(0, len(output_seeds), per_batch):
                    batch = output_seeds[start : start + per_batch]
                    if previews:
                        previews.first_output = start
                    denoised = denoise.run(request, pipe, refiner, batch, inputs, embeds, stop)
                    if finish:
                        shared = denoise.arguments(request, batch, stop) | embeds.base
                        denoised = finish(denoised, shared)
                    results.extend(zip(batch, denoised, strict=True))
            for name, state in patched.deepcache.items():
                print(protocol.deepcache_line(name, state.reused, state.total))
        for index, (output_seed, _) in enumerate(results):
            print(protocol.seed_line(index, output_seed))

        if request.apply_watermark and pipelines.family.traits.watermark:
            with timings.stage("watermark"):
                marked = apply_watermark([image for _, image in results])
            results = [(s, image) for (s, _), image in zip(results, marked, strict=True)]
        if picture:  # after the watermark, which marks what was generated and nothing else
            results = [(s, picture.paste(image)) for s, image in results]
        flagged: list[int] = []
        # Encoded while the safety checker runs: encoding is off the critical path.
        with Encoding(results, request.output_format, request.output_quality) as encoding:
            if not request.disable_safety_checker:
                with timings.stage("safety"):
                    results, flagged = self.safety.keep_unflagged(results)
            with timings.stage("encode"):
                outputs = self.outputs.save(encoding, [seed for seed, _ in results], folder, token)
                maps: list[Path] = []
                if request.return_control_maps:  # those that steered the (first) pass
                    slots = [(slot.name, slot.kind) for slot in request.controlnets]
                    print("\n".join(protocol.control_map_line(*slot) for slot in slots))
                    maps = self.outputs.save_maps(slots, steering.maps, folder, token)
        print(timings.line())
        counts = {name: (state.reused, state.total) for name, state in patched.deepcache.items()}
        return Generation(outputs, flagged, timings.milliseconds, counts, maps)

    def _second_pass(
        self,
        request: Request,
        pipelines: Pipelines,
        control_images: list[Image.Image],
        ip_image: Image.Image | None,
        size: tuple[int, int],
        cancelled: threading.Event | None,
    ) -> hires.SecondPass:
        unet_config = pipelines.base["txt2img"].unet.config
        steering = self.controlnets.prepare(
            request.controlnets, control_images, size, unet_config, cancelled
        )
        controlnet = steering and steering.controlnet
        pipe = pipelines.get("img2img", request.scheduler, controlnet, request.timestep_spacing)
        steps = request.hires_steps_run
        print(f"hires fix: second pass {size[0]}x{size[1]}, strength {request.hires_strength}, "
              f"{steps} steps")  # fmt: skip
        inputs = steering.arguments(pipe) if steering else {}
        if ip_image:
            inputs["ip_adapter_image"] = ip_image
        return hires.SecondPass(pipe, size, request.hires_strength, steps, inputs)
