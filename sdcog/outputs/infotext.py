"""Generation data in every image, as AUTOMATIC1111 writes it ("infotext"), so that civitai, A1111's
"PNG Info" and the tools that read A1111's images read ours: the prompt, a `Negative prompt:`
line, then one line of `Name: value` pairs. A value holding a comma, colon or line break is
JSON-quoted. PNG carries it in a `parameters` text chunk; JPEG and WebP in EXIF's UserComment
(an 8-byte "UNICODE" charset code, then UTF-16 big-endian), as A1111 writes it with piexif.

LoRAs and embeddings are named with civitai's AutoV2 hash (the first 10 hex digits of the file's
SHA-256): the adapter cache names each file by its SHA-256, so nothing is hashed twice.
"""

import json
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image, PngImagePlugin

from ..adapters.inversions import Inversion
from ..adapters.loras import Lora
from ..denoise import prompts
from ..request.request import Request

# Ours -> (A1111's sampler, its schedule type or None). A1111's "Automatic" schedule is the
# sampler's own, which is what ours use unless named otherwise.
A1111_SAMPLERS = {
    "K_EULER_ANCESTRAL": ("Euler a", None), "K_EULER": ("Euler", None),
    "DPMSolverMultistep": ("DPM++ 2M", None), "KarrasDPM": ("DPM++ 2M", "Karras"),
    "HeunDiscrete": ("Heun", None), "KDPM2": ("DPM2", None), "KDPM2_ANCESTRAL": ("DPM2 a", None),
    "KLMS": ("LMS", None), "PNDM": ("PLMS", None), "UniPCMultistep": ("UniPC", None),
    "DDIM": ("DDIM", None), "LCM": ("LCM", None), "DPMSolverMultistepSDE": ("DPM++ 2M SDE", None),
    "DPMSolverMultistep3MSDE": ("DPM++ 3M SDE", None), "DPMSolverSDE": ("DPM++ SDE", None),
}  # fmt: skip
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286
UNICODE = b"UNICODE\x00"


def autov2(path: Path) -> str:
    """civitai's AutoV2 hash of a file the adapter cache holds (named by its SHA-256)."""
    return path.stem[:10]


def adapter_name(reference: str) -> str:
    """The name A1111 would give a LoRA or embedding: its file's stem, else the reference's
    last part (a Hugging Face repository's name, a civitai AIR id's version)."""
    reference = reference.split("=", 1)[-1]  # TOKEN=REFERENCE
    last = urlsplit(reference).path.rstrip("/").rsplit("/", 1)[-1] or reference
    return last.removesuffix(".safetensors").replace(":", "_").replace("@", "_")


def as_read(prompt: str) -> str:
    """A prompt as the text encoder reads it: control characters and runs of whitespace (line
    breaks too) as one space, which changes no image and keeps the prompt on its lines."""
    return " ".join(prompts.clean(prompt).split())


def quote(value: object) -> str:
    """A1111's quoting: as written, unless a comma, colon or line break would split it."""
    text = str(value)
    return text if not any(c in text for c in ",:\n") else json.dumps(text, ensure_ascii=False)


@dataclass(frozen=True)
class Infotext:
    """What every output of a request shares; `text(seed, size)` is one output's."""

    request: Request
    model: str  # the model's name: its repository or file
    model_hash: str | None = None  # AutoV2 of its single file, where it came from one
    loras: tuple[tuple[str, str], ...] = ()  # (name, AutoV2)
    embeddings: tuple[tuple[str, str], ...] = ()

    def text(self, seed: int, size: tuple[int, int]) -> str:
        r = self.request
        sampler, schedule = A1111_SAMPLERS.get(r.scheduler, (r.scheduler, None))
        if r.schedule != "Automatic":
            schedule = r.schedule
        fields: dict[str, object] = {"Steps": r.num_inference_steps, "Sampler": sampler}
        if schedule:
            fields["Schedule type"] = schedule
        fields |= {"CFG scale": f"{r.guidance_scale:g}", "Seed": seed,
                   "Size": f"{size[0]}x{size[1]}"}  # fmt: skip
        if self.model_hash:
            fields["Model hash"] = self.model_hash
        fields["Model"] = self.model
        if r.clip_skip:  # A1111 counts the last layer as 1
            fields["Clip skip"] = r.clip_skip + 1
        if r.image is not None:
            fields["Denoising strength"] = f"{r.prompt_strength:g}"
        if r.hires_scale > 1:
            fields |= {"Hires upscale": f"{r.hires_scale:g}", "Hires steps": r.hires_steps_run,
                       "Hires upscaler": "Lanczos" if r.hires_upscaler == "lanczos" else
                       "R-ESRGAN 4x+", "Denoising strength": f"{r.hires_strength:g}"}  # fmt: skip
        if r.face_fix:  # as ADetailer writes its own
            if r.face_fix_prompt:
                fields["ADetailer prompt"] = r.face_fix_prompt
            fields |= {"ADetailer model": "BlazeFace",
                       "ADetailer confidence": f"{r.face_fix_confidence:g}",
                       "ADetailer denoising strength": f"{r.face_fix_strength:g}",
                       "ADetailer inpaint padding": r.face_fix_padding}  # fmt: skip
        if r.upscale > 1:  # as A1111's Extras writes it
            fields |= {"Postprocess upscale by": f"{r.upscale:g}",
                       "Postprocess upscaler": "R-ESRGAN 4x+"}  # fmt: skip
        for label, entries in (("Lora hashes", self.loras), ("TI hashes", self.embeddings)):
            if entries:
                fields[label] = ", ".join(f"{name}: {digest}" for name, digest in entries)
        fields["Version"] = f"sdcog with diffusers {version('diffusers')}"
        lines = [as_read(r.prompt)]
        if r.negative_prompt:
            lines.append(f"Negative prompt: {as_read(r.negative_prompt)}")
        lines.append(", ".join(f"{name}: {quote(value)}" for name, value in fields.items()))
        return "\n".join(lines)


def texts(
    request: Request,
    model: str,
    checkpoint_sha256: str | None,
    loras: list[Lora],
    inversions: list[Inversion],
    results: list[tuple[int, Image.Image]],
) -> dict[int, str]:
    """Each output's generation data: `model` is the model's repository, URL or AIR id;
    `checkpoint_sha256`, its single file's, when it came from one."""
    named = Infotext(
        request, adapter_name(model), checkpoint_sha256 and checkpoint_sha256[:10],
        tuple((adapter_name(lora.reference), autov2(lora.path)) for lora in loras),
        tuple((adapter_name(i.reference), autov2(i.path)) for i in inversions),
    )  # fmt: skip
    return {seed: named.text(seed, image.size) for seed, image in results}


def save_options(output_format: str, text: str) -> dict:
    """PIL's save() options that carry `text` in a file of this format."""
    if output_format == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text)
        return {"pnginfo": info}
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = UNICODE + text.encode("utf-16-be")
    return {"exif": exif.tobytes()}


def read(image: Image.Image) -> str | None:
    """The infotext an image carries (ours or A1111's), or None."""
    if "parameters" in image.info:
        return image.info["parameters"]
    comment = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    if isinstance(comment, bytes) and comment.startswith(UNICODE):
        return comment[len(UNICODE) :].decode("utf-16-be")
    return None
