"""script/bench's plain diffusers path: the pipeline as diffusers' documentation loads it."""

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    AutoPipelineForText2Image,
    DDIMScheduler,
    StableDiffusionXLImg2ImgPipeline,
)
from PIL import Image

from ..adapters.controlnets import CLASSES, UNION_ENTRY, UNION_MODES
from ..common.families import PIPELINE_KINDS
from ..models.pipelines import device_and_dtype
from ..request.seeds import generators
from .bench_paths import NEGATIVE, PROMPT, Call, Outcome, Setup


class Diffusers:
    """diffusers as its documentation loads it, with our scheduler choice (DDIM) for parity."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.device, self.dtype = device_and_dtype()
        self.local = {"dtype": self.dtype, "local_files_only": True}
        self.pipe = self._load()
        self.refiner = self.lora_pipe = None

    def _load(self) -> Any:
        s, extra = self.setup, {}
        if (s.weights / "vae/config.json").exists():
            extra["vae"] = AutoencoderKL.from_pretrained(s.weights / "vae", **self.local)
        if s.family == "sd":
            extra |= {"safety_checker": None, "feature_extractor": None,
                      "requires_safety_checker": False}  # fmt: skip
        pipe = AutoPipelineForText2Image.from_pretrained(s.weights / "base", **self.local, **extra)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        return pipe.to(self.device)

    def call(self, case: str) -> Call | None:
        s = self.setup
        common = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "num_inference_steps": s.steps,
                  "guidance_scale": 7.5}  # fmt: skip
        size = {"width": s.size, "height": s.size}

        def seeded() -> list[torch.Generator]:
            # As ours seeds (sdcog/request/seeds.py): a CPU generator, the same noise on any device,
            # so the image lines compare like with like.
            return generators([1])

        if case in ("deepcache", "previews", "upscale", "face_fix"):  # ours only
            return None
        if case == "txt2img":
            return lambda: _first(self.pipe(**common, **size, generator=seeded()).images)
        if case == "lora":  # a pipeline of its own with the LoRA loaded, as one user would
            if self.lora_pipe is None:
                self.lora_pipe = self._load()
                self.lora_pipe.load_lora_weights(str(s.lora))
                self.lora_pipe.set_adapters(["default_0"], [0.8])
            pipe = self.lora_pipe
            return lambda: _first(pipe(**common, **size, generator=seeded()).images)
        if case == "refiner":
            refiner = self._refiner()
            return lambda: _first(refiner(
                **common, denoising_start=0.8, generator=seeded(),
                image=self.pipe(**common, **size, denoising_end=0.8, output_type="latent",
                                generator=seeded()).images,
            ).images)  # fmt: skip
        return self._controlnet(common, size, seeded)

    def _refiner(self) -> StableDiffusionXLImg2ImgPipeline:
        if self.refiner is None:
            self.refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
                self.setup.weights / "refiner", vae=self.pipe.vae,
                text_encoder_2=self.pipe.text_encoder_2, tokenizer_2=self.pipe.tokenizer_2,
                **self.local,
            ).to(self.device)  # fmt: skip
            self.refiner.scheduler = DDIMScheduler.from_config(self.refiner.scheduler.config)
        return self.refiner

    def _controlnet(self, common: dict, size: dict, seeded: Callable) -> Call:
        s = self.setup
        folder = s.weights / s.controlnet_entry
        kind = CLASSES[json.loads((folder / "config.json").read_text())["_class_name"]]
        variant = "fp16" if any(folder.glob("*.fp16.safetensors")) else None
        model = kind.from_pretrained(folder, variant=variant, **self.local).to(self.device)
        union = s.controlnet_entry == UNION_ENTRY
        pipe = (
            PIPELINE_KINDS[s.family]
            .control_pipelines[union]["txt2img"]
            .from_pipe(self.pipe, controlnet=model, dtype=self.dtype)
        )
        image = Image.open(s.control)
        control = (
            {"control_image": [image], "control_mode": [UNION_MODES["canny"]]}
            if union
            else {"image": image}
        )
        return lambda: _first(pipe(**common, **size, **control, generator=seeded()).images)

    def pids(self) -> None:
        return None  # this process

    def close(self) -> None:
        del self.pipe, self.refiner, self.lora_pipe


def _first(images: list) -> Outcome:
    return Outcome(np.asarray(images[0].convert("RGB")))
