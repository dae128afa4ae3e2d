"""The safety checker, run on finished images so that flagged ones can be left out alone."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import CLIPImageProcessor

from ..common import protocol


@dataclass
class SafetyChecker:
    checker: StableDiffusionSafetyChecker
    processor: CLIPImageProcessor

    @classmethod
    def load(cls, safety_dir: Path, device: torch.device, dtype: torch.dtype) -> "SafetyChecker":
        if not (safety_dir / "safety_checker" / "config.json").exists():
            raise FileNotFoundError(
                f"no safety checker at {safety_dir}: run script/download-weights"
            )
        checker = StableDiffusionSafetyChecker.from_pretrained(
            safety_dir / "safety_checker", dtype=dtype, local_files_only=True, device_map=device
        )
        processor = CLIPImageProcessor.from_pretrained(safety_dir / "feature_extractor")
        return cls(checker=checker, processor=processor)

    def flags(self, images: list[Image.Image]) -> list[bool]:
        """One flag per image: True where the checker found a concept it filters."""
        pixels = self.processor(images, return_tensors="pt").pixel_values
        pixels = pixels.to(self.checker.device, self.checker.dtype)
        arrays = [np.asarray(image) for image in images]  # the checker blacks these out; unused
        _, flagged = self.checker(clip_input=pixels, images=arrays)
        return [bool(f) for f in flagged]

    def keep_unflagged(
        self, results: list[tuple[int, Image.Image]]
    ) -> tuple[list[tuple[int, Image.Image]], list[int]]:
        """(seed, image) pairs less the flagged ones (each logged), and the flagged seeds; an
        error if all are flagged."""
        flags = self.flags([image for _, image in results])
        kept, left_out = [], []
        for index, (result, flagged) in enumerate(zip(results, flags, strict=True)):
            if flagged:
                print(protocol.flagged_line(index, result[0]))
                left_out.append(result[0])
            else:
                kept.append(result)
        if not kept:
            raise ValueError(
                f"disable_safety_checker: all {len(results)} output(s) were flagged as possibly "
                "NSFW by the safety checker. Try another prompt or seed, or set "
                "disable_safety_checker."
            )
        return kept, left_out
