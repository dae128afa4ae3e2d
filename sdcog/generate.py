"""Request -> pipeline -> images: one prediction from start to files on disk."""

import functools
import threading
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from PIL import Image

from .adapters.controlnets import ControlNets
from .adapters.faces import FaceDetector
from .adapters.ip_adapters import IPAdapters
from .adapters.loras import WarmLoras
from .checks import Checks
from .common import cancel, errors, memory, protocol
from .common.families import Facts
from .common.pins import names, pin_file_of, read_pins
from .common.timings import SETUP_STAGES, Timings
from .denoise import denoise, hires, prompts, request_images
from .denoise.face_fix import FaceFix
from .denoise.previews import PreviewDecoder, PreviewStream
from .denoise.request_images import Inputs
from .denoise.steps import StepHooks
from .fetch.downloads import AdapterCache
from .models import model_files, upscalers
from .models.loaded_models import LoadedModels, Model
from .models.pipelines import Pipelines, device_and_dtype
from .models.upscalers import Upscaler
from .outputs import infotext
from .outputs.outputs import Encoding, Generation, OutputFolders
from .outputs.safety import SafetyChecker
from .outputs.watermark import apply_watermark
from .patches import Patches, Patching
from .request import seeds
from .request.request import Request
from .serving.settings import Settings
from .speed import torch_compile


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
        with setup.stage("finishing"):  # the upscaler and face detector, where pinned
            device = self.pipelines.device
            self.upscaler = Upscaler.load(weights_dir, device, dtype)
            self.faces = FaceDetector.load(weights_dir, device)
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
        base = next(p for p in read_pins(pin_file_of(weights_dir)) if p.name == "base")
        self.model_name = names(base)[0]  # what its images' infotext calls it
        self.models = LoadedModels(pinned, self.ip_adapters, self.settings, weights_dir)
        self.checks = Checks(
            self.pipelines, self.previews, self.ip_adapters, self.controlnets,
            self.models.choice, self.upscaler, self.faces,
        )  # fmt: skip
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
        except cancel.PredictionCancelledError:
            failure = cancel.PredictionCancelledError("cancelled")
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
        timings, hooks = Timings(), StepHooks()
        stop = StepHooks()  # the cancel check alone, for the face fix's passes
        for each in (hooks, stop):
            each.add(cancel.stop_if_set(cancelled or threading.Event()))
        # 1. Check: the request on its own and against this build; nothing is fetched before.
        choice = self.checks.request(request)
        # 2. Choose the model: the build's, or the request's (checked against its configs
        # before its weights are fetched).
        fits = functools.partial(self.checks.model, request)
        model, vae = self.models.chosen(choice, fits, cancelled)
        # 3. Read the inputs: images, size, seeds, control maps; previews' files.
        inputs = self._read(request, model, timings, hooks, cancelled, emit)
        with ExitStack() as stack:  # what the request changes on its model, undone after it
            # 4. Patch: the request's VAE, LoRAs, embeddings, IP-Adapter, DeepCache.
            with timings.stage("adapters"):
                patched = self.patches.applied(stack, request, model, vae, hooks, cancelled)
            # 5. Encode the prompts.
            with timings.stage("prompts"):
                embeds = self._encode(request, model, patched)
            # 6. Denoise, batch by batch (hires fix: both passes); prompt_strength 0: nothing.
            if request.finishing_only:
                results = [(inputs.seeds[0], inputs.image)]
            else:
                results = denoise.batches(
                    request, model.pipelines, inputs, embeds, hooks, timings, self.upscaler
                )
            for name, state in patched.deepcache.items():
                print(protocol.deepcache_line(name, state.reused, state.total))
            finished = request.face_fix or request.upscale > 1
            if finished and inputs.picture:  # the stages after this finish the whole picture
                results = [(s, inputs.picture.paste(image)) for s, image in results]
            # 7. Fix faces (face_fix), while the patches are on: a LoRA reaches the faces too.
            painted = not request.finishing_only  # whether the model painted any pixel
            if request.face_fix:
                with timings.stage("face_fix"):
                    fix = FaceFix.of(request, model.pipelines, self.faces, patched.prompt,
                                     patched.tokenizers, inputs.ip_image, stop)  # fmt: skip
                    results = fix.each(request, results)
                painted = painted or fix.fixed > 0
        # 8. Finish: upscale, watermark, safety, files.
        pasted = finished and inputs.picture is not None
        return self._finish(request, model, inputs, results, patched, timings, pasted, painted)

    def _read(
        self,
        request: Request,
        model: Model,
        timings: Timings,
        hooks: StepHooks,
        cancelled: threading.Event | None,
        emit: Callable[[Path], None],
    ) -> Inputs:
        pipelines = model.pipelines
        unet_config = pipelines.base["txt2img"].unet.config
        with timings.stage("read"):
            picture, image, mask, control_images, ip_image = request_images.read(request)
        size = request_images.size(request, pipelines.native_size, image, mask, control_images)
        seed = seeds.resolve_seed(request.seed)
        first = hires.first_size(size, request.hires_scale) if request.hires_scale > 1 else size
        steering = self.controlnets.prepare(
            request.controlnets, control_images, first, unet_config, cancelled
        )
        if request.refine != "no_refiner":
            steps = request.refine_steps_run
            detail = (f"the last {1 - request.high_noise_frac:.2f} of {steps} steps"
                      if request.refine == "expert_ensemble_refiner"
                      else f"{steps} steps at strength 0.3")  # fmt: skip
            print(f"refine: {request.refine}, {detail}")
        if request.upscale > 1:  # refused before any work, now that the output's size is known
            whole = picture.picture.size if picture else size
            upscalers.check_size(image.size if request.finishing_only else whole, request.upscale)
        stage = " (hires fix: first pass)" if first != size else ""
        if request.finishing_only:
            print(f"finishing only (prompt_strength 0): the image as given, "
                  f"{image.width}x{image.height}, seed {seed}")  # fmt: skip
        else:
            print(f"{request.mode} {first[0]}x{first[1]}{stage}, {request.scheduler}, seed {seed}")
        second_steering = None
        if first != size:
            second_steering = self.controlnets.prepare(
                request.controlnets, control_images, size, unet_config, cancelled
            )
            by = ", first pass enlarged by the upscaler" * (request.hires_upscaler == "upscaler")
            print(f"hires fix: second pass {size[0]}x{size[1]}, strength "
                  f"{request.hires_strength}, {request.hires_steps_run} steps{by}")  # fmt: skip
        folder, token = self.outputs.open()
        previews = None
        if request.preview_every:
            previews = PreviewStream(self.previews, request.preview_every, folder, token, emit)
            hooks.add(previews.step_end)
        return Inputs(
            picture=picture, image=image, mask=mask, ip_image=ip_image, size=size, first=first,
            seeds=seeds.output_seeds(seed, request.num_outputs), steering=steering,
            second_steering=second_steering, folder=folder, token=token, previews=previews,
        )  # fmt: skip

    def _encode(self, request: Request, model: Model, patched: Patching) -> prompts.Embeddings:
        pipelines = model.pipelines
        refiner = pipelines.refiner[request.mode] if request.refine != "no_refiner" else None
        zeros = refiner is not None and refiner.config.force_zeros_for_empty_prompt
        return prompts.encode(
            pipelines.base["txt2img"], pipelines.family, patched.prompt, request.negative_prompt,
            request.prompt_weighting, request.clip_skip, patched.tokenizers, refiner_zeros=zeros,
        )  # fmt: skip

    def _finish(
        self,
        request: Request,
        model: Model,
        inputs: Inputs,
        results: list[tuple[int, Image.Image]],
        patched: Patching,
        timings: Timings,
        pasted: bool,
        painted: bool,
    ) -> Generation:
        """The seeds said; the upscale; SDXL's watermark, the last change to the pixels; the
        outpainted picture, unless the face fix or upscale had it already; the safety checker,
        while the images are encoded; the files."""
        for index, (output_seed, _) in enumerate(results):
            print(protocol.seed_line(index, output_seed))
        if request.upscale > 1:
            with timings.stage("upscale"):
                results = [(s, self.upscaler(image, request.upscale)) for s, image in results]
            size = results[0][1].size
            print(f"upscale: {request.upscale:g}x to {size[0]}x{size[1]}")
        # SDXL's watermark says the model painted this: not on a photo only upscaled.
        if request.apply_watermark and model.pipelines.family.traits.watermark and painted:
            with timings.stage("watermark"):
                marked = apply_watermark([image for _, image in results])
            results = [(s, image) for (s, _), image in zip(results, marked, strict=True)]
        if inputs.picture and not pasted:  # after the watermark, which marks what was generated
            results = [(s, inputs.picture.paste(image)) for s, image in results]
        flagged: list[int] = []
        folder, token = inputs.folder, inputs.token
        texts = {}
        if request.write_metadata:
            name = self.model_name if model.folder == self.weights_dir / "base" else model.name
            digest = model_files.checkpoint_sha256(model.folder)
            texts = infotext.texts(
                request, name, digest, patched.loras, patched.inversions, results
            )
        # Encoded while the safety checker runs: encoding is off the critical path.
        format, quality = request.output_format, request.output_quality
        with Encoding(results, format, quality, texts) as encoding:
            if not request.disable_safety_checker:
                with timings.stage("safety"):
                    results, flagged = self.safety.keep_unflagged(results)
            with timings.stage("encode"):
                outputs = self.outputs.save(encoding, [seed for seed, _ in results], folder, token)
                maps: list[Path] = []
                if request.return_control_maps:  # those that steered the (first) pass
                    slots = [(slot.name, slot.kind) for slot in request.controlnets]
                    print("\n".join(protocol.control_map_line(*slot) for slot in slots))
                    maps = self.outputs.save_maps(slots, inputs.steering.maps, folder, token)
        print(timings.line())
        counts = {name: (state.reused, state.total) for name, state in patched.deepcache.items()}
        return Generation(outputs, flagged, timings.milliseconds, counts, maps)
