"""Previews while a prediction runs: every `preview_every` denoising steps, each output's current
latents decoded by the tiny autoencoder made for that (TAESD for SD 1.x/2.x, TAESDXL for SDXL;
pinned as [taesd], MIT-licensed) and written as a small JPEG, `preview-<output>-step<k>-<token>`.

The decoder reads the latents diffusers hands its step-end callback and changes nothing: the
final images are the same bytes with previews on or off. Steps are counted over the whole
prediction (a refiner's and a hires fix's second pass continue the count).
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderTiny
from PIL import Image

from ..common import protocol
from ..common.families import Family

ENTRY = "taesd"
QUALITY = 70  # small files: a preview is looked at once


class PreviewDecoder:
    def __init__(self, decoder: AutoencoderTiny | None, family: Family) -> None:
        """`family`: the build's, whose latents the pinned decoder decodes."""
        self.decoder, self.family = decoder, family

    @classmethod
    def load(
        cls, weights_dir: Path, family: Family, device: torch.device, dtype: torch.dtype
    ) -> "PreviewDecoder":
        """The pinned decoder, loaded once; without the pin, none (previews are refused)."""
        folder = weights_dir / ENTRY
        if not (folder / "config.json").exists():
            return cls(None, family)
        decoder = AutoencoderTiny.from_pretrained(
            folder, dtype=dtype, local_files_only=True, device_map=str(device)
        )
        decoder.requires_grad_(False)
        return cls(decoder, family)

    def check(self, preview_every: int) -> None:
        if preview_every and self.decoder is None:
            raise ValueError(
                f"preview_every: this build has no preview decoder (pin [{ENTRY}] in "
                "weights/pins.toml); set preview_every to 0"
            )

    def check_fits(self, preview_every: int, model: Family, name: str) -> None:
        """The decoder decodes one latent space: a requested model of another family's is not
        its to preview."""
        if preview_every and model.traits.latents != self.family.traits.latents:
            raise ValueError(
                f"preview_every: this build's preview decoder is for {self.family.traits.label} "
                f"latents, and {name} is {model.traits.label}; set preview_every to 0"
            )

    @torch.no_grad()
    def images(self, latents: torch.Tensor) -> list[Image.Image]:
        assert self.decoder is not None
        pixels = self.decoder.decode(latents.to(self.decoder.dtype)).sample
        pixels = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        array = pixels.permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(np.ascontiguousarray(image)) for image in array]


class PreviewStream:
    """One prediction's previews: the step counter, and where each file goes as it is written
    (`emit`, from the prediction's thread)."""

    def __init__(
        self,
        decoder: PreviewDecoder,
        every: int,
        folder: Path,
        token: str,
        emit: Callable[[Path], None],
    ) -> None:
        self.decoder, self.every, self.folder, self.token = decoder, every, folder, token
        self.emit = emit
        self.steps = 0
        self.first_output = 0  # the batch's first output index

    def step_end(self, pipe: object, step: int, timestep: object, kwargs: dict) -> dict:
        """A step hook: a preview every `every` steps."""
        self.steps += 1
        if self.steps % self.every == 0 and "latents" in kwargs:
            self._write(kwargs["latents"])
        return kwargs

    def _write(self, latents: torch.Tensor) -> None:
        for offset, image in enumerate(self.decoder.images(latents)):
            index = self.first_output + offset
            name = protocol.preview_name(index, self.steps, self.token)
            path = self.folder / f"{name}.jpg"
            image.save(path, format="JPEG", quality=QUALITY)
            print(protocol.preview_line(index, self.steps))
            self.emit(path)
