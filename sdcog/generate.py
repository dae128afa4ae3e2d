"""Request -> pipeline -> images: one prediction from start to files on disk."""

import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

from . import images, seeds
from .pipelines import Pipelines, device_and_dtype
from .request import Request
from .safety import SafetyChecker

# Pixels denoised in one UNet batch: 9 images at 512x512, 4 at 768x768, 1 from 1536x1536 up.
MAX_BATCH_PIXELS = 4 * 768 * 768
# Above this many pixels the VAE decodes in tiles, so 2048x2048 fits in a 24 GB GPU.
TILED_DECODE_PIXELS = 1024 * 1024


class Generator:
    """Holds the loaded model; each call runs one request and returns its image files."""

    def __init__(self, weights_dir: Path) -> None:
        self.pipelines = Pipelines.load(weights_dir / "base")
        _, dtype = device_and_dtype()
        self.safety = SafetyChecker.load(weights_dir / "safety", self.pipelines.device, dtype)
        self._output_dir: Path | None = None

    def __call__(self, request: Request) -> list[Path]:
        image, mask = _read_inputs(request)
        size = images.output_size(request.width, request.height, self.pipelines.native_size, image)
        seed = seeds.resolve_seed(request.seed)
        output_seeds = seeds.output_seeds(seed, request.num_outputs)
        pipe = self.pipelines.get(request.mode, request.scheduler)
        if size[0] * size[1] > TILED_DECODE_PIXELS:
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()
        print(f"{request.mode} {size[0]}x{size[1]}, {request.scheduler}, seed {seed}")

        per_batch = max(1, MAX_BATCH_PIXELS // (size[0] * size[1]))
        results: list[tuple[int, Image.Image]] = []
        for start in range(0, len(output_seeds), per_batch):
            batch = output_seeds[start : start + per_batch]
            out = pipe(
                prompt=[request.prompt] * len(batch),
                negative_prompt=[request.negative_prompt] * len(batch),
                num_inference_steps=request.num_inference_steps,
                guidance_scale=request.guidance_scale,
                generator=seeds.generators(batch),
                **_mode_inputs(request, image, mask, size),
            )
            results.extend(zip(batch, out.images, strict=True))
        for index, (output_seed, _) in enumerate(results):
            print(f"output {index}: seed {output_seed}")

        if not request.disable_safety_checker:
            results = self._drop_flagged(results)
        return self._save(results, request)

    def _drop_flagged(
        self, results: list[tuple[int, Image.Image]]
    ) -> list[tuple[int, Image.Image]]:
        flags = self.safety.flags([image for _, image in results])
        kept = []
        for index, (result, flagged) in enumerate(zip(results, flags, strict=True)):
            if flagged:
                print(f"output {index} (seed {result[0]}) was flagged as NSFW and left out")
            else:
                kept.append(result)
        if not kept:
            raise RuntimeError(
                f"All {len(results)} output(s) were flagged as possibly NSFW by the safety "
                "checker. Try another prompt or seed, or set disable_safety_checker."
            )
        return kept

    def _save(self, results: list[tuple[int, Image.Image]], request: Request) -> list[Path]:
        # Cog sends the files after predict() returns, so the previous prediction's folder is
        # removed now rather than then.
        if self._output_dir is not None:
            shutil.rmtree(self._output_dir, ignore_errors=True)
        self._output_dir = Path(tempfile.mkdtemp(prefix="sdcog-"))
        token = uuid.uuid4().hex[:8]  # unique names: uploads from two predictions never collide
        return [
            images.save_image(
                image,
                self._output_dir / f"out-{index}-seed{output_seed}-{token}",
                request.output_format,
                request.output_quality,
            )
            for index, (output_seed, image) in enumerate(results)
        ]


def _read_inputs(request: Request) -> tuple[Image.Image | None, Image.Image | None]:
    image = images.read_image(request.image, "image") if request.image else None
    mask = images.read_image(request.mask, "mask", mode="L") if request.mask else None
    if image is not None and mask is not None and mask.size != image.size:
        raise ValueError(
            f"mask: its size {mask.width}x{mask.height} differs from the image's "
            f"{image.width}x{image.height}; give a mask of the same size"
        )
    return image, mask


def _mode_inputs(
    request: Request,
    image: Image.Image | None,
    mask: Image.Image | None,
    size: tuple[int, int],
) -> dict[str, Any]:
    """The arguments that differ between txt2img, img2img and inpainting."""
    width, height = size
    if image is None:
        return {"width": width, "height": height}
    inputs: dict[str, Any] = {
        "image": image.resize(size, Image.Resampling.LANCZOS),
        "strength": request.prompt_strength,
    }
    if mask is not None:
        inputs.update(
            mask_image=mask.resize(size, Image.Resampling.LANCZOS), width=width, height=height
        )
    return inputs
