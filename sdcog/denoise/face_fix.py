"""The face fix (stage 7), ADetailer's recipe: find the faces; for each, crop its box plus
face_fix_padding, inpaint the crop at the model's native pixel count with the face prompt at
face_fix_strength, and paste it back through the face's mask, feathered. Pixels outside the
padded box are never touched. It runs while the request's patches are on, so its LoRAs and
embeddings reach the faces too; ControlNets do not (the plain inpainting pipeline)."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw, ImageFilter

from ..adapters.faces import Face, FaceDetector
from ..models.pipelines import Pipelines
from ..request import images, seeds
from ..request.request import Request
from . import prompts

MASK_BLUR = 4  # pixels of feathering at the mask's edge (ADetailer's default)


@dataclass
class FaceFix:
    """What the face fix needs besides the image: the detector, the inpainting pipeline and
    the encoded face prompts, and the arguments the request's denoising shares."""

    detector: FaceDetector
    pipe: Any
    native: int
    embeds: dict[str, Any]
    extra: dict[str, Any]  # the IP-Adapter's image, when the request has one
    stop: Callable
    fixed: int = 0  # faces repainted so far

    @classmethod
    def of(cls, request: Request, pipelines: Pipelines, detector: FaceDetector, prompt: str,
           tokenizers: dict[str, Any] | None, ip_image: Image.Image | None,
           stop: Callable) -> "FaceFix":  # fmt: skip
        """The face fix of a request on its model, with the request's patches on: `prompt` and
        `tokenizers` are the patched ones (a fine-tune's placeholder replaced, embeddings'
        tokens added)."""
        embeds = prompts.encode(
            pipelines.base["txt2img"], pipelines.family,
            request.face_fix_prompt or prompt,
            request.face_fix_negative_prompt or request.negative_prompt,
            request.prompt_weighting, request.clip_skip, tokenizers,
        )  # fmt: skip
        extra = {"ip_adapter_image": ip_image} if ip_image else {}
        pipe = pipelines.get(
            "inpaint", request.scheduler, None, request.timestep_spacing, request.schedule
        )
        return cls(detector, pipe, pipelines.native_size, embeds.base, extra, stop)

    def each(
        self, request: Request, results: list[tuple[int, Image.Image]]
    ) -> list[tuple[int, Image.Image]]:
        """Every output's (seed, image), its faces repainted."""
        return [(seed, self(request, index, seed, image))
                for index, (seed, image) in enumerate(results)]  # fmt: skip

    def __call__(self, request: Request, index: int, seed: int, image: Image.Image) -> Image.Image:
        """Output `index`'s image with its faces repainted; the same image when none is found."""
        faces = self.detector(image, request.face_fix_confidence)
        chosen = faces[: request.face_fix_max_faces]
        if not chosen:
            print(f"face fix: no face found in output {index} (confidence "
                  f"{request.face_fix_confidence}); it is returned as it was")  # fmt: skip
            return image
        for number, face in enumerate(chosen):
            image = self._fix(request, seed + number, image, face)
            self.fixed += 1
        print(f"face fix: output {index}: {len(faces)} found, {len(chosen)} fixed "
              f"({', '.join(f'{f.score:.2f}' for f in chosen)})")  # fmt: skip
        return image

    def _fix(self, request: Request, seed: int, image: Image.Image, face: Face) -> Image.Image:
        left, top, right, bottom = face.box
        padding = request.face_fix_padding
        region = (max(0, left - padding), max(0, top - padding),
                  min(image.width, right + padding),
                  min(image.height, bottom + padding))  # fmt: skip
        crop = image.crop(region)
        size = images.output_size(None, None, self.native, crop)  # native pixels, crop's aspect
        mask = Image.new("L", crop.size, 0)
        inner = (left - region[0], top - region[1], right - region[0], bottom - region[1])
        ImageDraw.Draw(mask).rectangle(inner, fill=255)
        repainted = self.pipe(
            **self.embeds, **self.extra,
            image=crop.resize(size, Image.Resampling.LANCZOS),
            mask_image=mask.resize(size, Image.Resampling.LANCZOS),
            width=size[0], height=size[1], strength=request.face_fix_strength,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            generator=seeds.generators([seed], request.seed_device),
            callback_on_step_end=self.stop,
        ).images[0].resize(crop.size, Image.Resampling.LANCZOS)  # fmt: skip
        # Feathered inside the padding: the blur never reaches the region's edge.
        feather = mask.filter(ImageFilter.GaussianBlur(min(MASK_BLUR, padding / 2)))
        fixed = image.copy()
        fixed.paste(Image.composite(repainted, crop, feather), region[:2])
        return fixed
