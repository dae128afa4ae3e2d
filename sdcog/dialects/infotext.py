"""AUTOMATIC1111's generation data ("infotext": what A1111 and this package write into images,
and what civitai's "Copy generation data" gives) read back as predict() inputs.

The settings this package has map exactly; the model, LoRAs and embeddings are found by their
civitai hash (civitai's by-hash API, through CIVITAI_ENDPOINT) when a lookup is given; anything
else is returned as "not honoured", to be said in one line, never silently dropped.
"""

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..request.schedulers import A1111_NAMES, NEAREST, SCHEDULERS, SCHEDULES
from . import ModelNames

# A pair of the last line: a name, a colon, then a JSON-quoted string or anything up to a comma.
PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([-\d.]+))?[^>]*>")
# Written for people, read for nothing: accepted without a word.
SILENT = {"Version", "Model hash", "Postprocess upscaler", "ADetailer model", "ADetailer version"}
Lookup = Callable[[str], str | None]  # AutoV2 hash -> civitai AIR id, or None


def parse(text: str) -> dict[str, str]:
    """The fields of an infotext: Prompt, Negative prompt, and each pair of its last line."""
    *lines, last = text.strip("\n").split("\n")
    if len(PAIR.findall(last)) < 3:  # A1111's rule: fewer than 3 pairs are the prompt's
        lines, last = [*lines, last], ""
    negative = next((i for i, line in enumerate(lines) if line.startswith("Negative prompt:")),
                    len(lines))  # fmt: skip
    fields = {"Prompt": "\n".join(lines[:negative])}
    if negative < len(lines):
        rest = "\n".join(lines[negative:])
        fields["Negative prompt"] = rest[len("Negative prompt:") :].strip()
    for name, value in PAIR.findall(last):
        fields[name] = json.loads(value) if value.startswith('"') else value.strip()
    return fields


def to_inputs(
    text: str, build: ModelNames, lookup: Lookup | None = None
) -> tuple[dict[str, Any], list[str]]:
    """predict()'s inputs for an infotext, and what of it is not honoured (each "Field: value
    (why)")."""
    fields = parse(text)
    unused: list[str] = []
    prompt, scales = _lora_tags(fields.pop("Prompt"))
    inputs: dict[str, Any] = {"prompt": prompt}
    if "Negative prompt" in fields:
        inputs["negative_prompt"] = fields.pop("Negative prompt")
    hires = "Hires upscale" in fields
    simple = {"Steps": ("num_inference_steps", int), "CFG scale": ("guidance_scale", float),
              "Seed": ("seed", int), "Hires upscale": ("hires_scale", float),
              "Hires steps": ("hires_steps", int), "Postprocess upscale by": ("upscale", float),
              "Denoising strength": ("hires_strength" if hires else "prompt_strength", float),
              "ADetailer denoising strength": ("face_fix_strength", float),
              "ADetailer confidence": ("face_fix_confidence", float),
              "ADetailer inpaint padding": ("face_fix_padding", int),
              "ADetailer prompt": ("face_fix_prompt", str)}  # fmt: skip
    for name, (ours, kind) in simple.items():
        if name in fields:
            inputs[ours] = kind(fields.pop(name))
    if any(name.startswith("ADetailer") for name in fields) or "face_fix_strength" in inputs:
        inputs["face_fix"] = True
    if "Size" in fields:
        width, height = fields.pop("Size").split("x")
        inputs |= {"width": int(width), "height": int(height)}
    if "Clip skip" in fields:  # A1111 counts the last layer as 1
        inputs["clip_skip"] = int(fields.pop("Clip skip")) - 1
    _sampler(fields, inputs, unused)
    if "Hires upscaler" in fields:
        upscaler = fields.pop("Hires upscaler")
        if upscaler == "Lanczos":
            inputs["hires_upscaler"] = "lanczos"
        elif "ESRGAN" in upscaler:
            inputs["hires_upscaler"] = "upscaler"
        else:
            unused.append(f"Hires upscaler: {upscaler} (here: Lanczos, or the build's upscaler)")
    _model(fields, build, lookup, inputs, unused)
    for label, input_name in (("Lora hashes", "lora_weights"), ("TI hashes", "textual_inversions")):
        for name, digest in _named_hashes(fields.pop(label, "")):
            air = lookup(digest) if lookup else None
            if air is None:
                unused.append(f"{label}: {name}: {digest} (not found by its hash on civitai)")
                continue
            inputs.setdefault(input_name, []).append(
                air if input_name == "lora_weights" else f"{name}={air}"
            )
            if input_name == "lora_weights":
                inputs.setdefault("lora_scales", []).append(scales.get(name, 1.0))
    unused += [f"{name}: {value}" for name, value in fields.items() if name not in SILENT]
    return inputs, unused


def read(source: str) -> str:
    """The infotext of an image file (a PNG's parameters, a JPEG's or WebP's EXIF), the text of
    a text file, or `source` itself."""
    path = Path(source)
    if not path.is_file():
        return source
    from PIL import Image, UnidentifiedImageError

    from ..outputs.infotext import read as read_image

    try:
        with Image.open(path) as image:
            text = read_image(image)
    except UnidentifiedImageError:
        return path.read_text()
    if text is None:
        raise ValueError(f"{source}: the image carries no generation data")
    return text


def _lora_tags(prompt: str) -> tuple[str, dict[str, float]]:
    """A1111's `<lora:name:weight>` tags taken out of the prompt, as each LoRA's scale."""
    scales = {name: float(weight or 1) for name, weight in LORA_TAG.findall(prompt)}
    cleaned = re.sub(r"\s*" + LORA_TAG.pattern, "", prompt)  # with the space before it
    return cleaned.strip(" ,"), scales


def _sampler(fields: dict[str, str], inputs: dict[str, Any], unused: list[str]) -> None:
    sampler = fields.pop("Sampler", None)
    schedule = fields.pop("Schedule type", "Automatic")
    if sampler is not None:
        if sampler in NEAREST:
            unused.append(f"Sampler: {sampler} (no exact equivalent; the nearest is "
                          f"{NEAREST[sampler]})")  # fmt: skip
        elif sampler in A1111_NAMES or sampler in SCHEDULERS:
            inputs["scheduler"] = sampler
        else:
            unused.append(f"Sampler: {sampler} (not served here)")
    if schedule in SCHEDULES:
        if schedule != "Automatic":
            inputs["schedule"] = schedule
    else:
        unused.append(f"Schedule type: {schedule} (one of {', '.join(SCHEDULES)} here)")


def _model(fields: dict[str, str], build: ModelNames, lookup: Lookup | None,
           inputs: dict[str, Any], unused: list[str]) -> None:  # fmt: skip
    """The build's model unless the infotext names another, found by its hash."""
    name, digest = fields.pop("Model", None), fields.get("Model hash")
    own = build.pinned("base") or ""
    if name is None or own.rstrip("/").rsplit("/", 1)[-1] == name or build.serves("base", name):
        return
    air = lookup(digest) if lookup and digest else None
    if air:
        inputs["base_model"] = air
    else:
        unused.append(f"Model: {name} (not this build's, and not found by its hash)")


def _named_hashes(text: str) -> list[tuple[str, str]]:
    return [tuple(map(str.strip, item.rsplit(":", 1))) for item in text.split(",") if ":" in item]


def civitai_lookup(endpoint: str, get: Callable[[str], Any]) -> Lookup:
    """civitai's by-hash API: GET /api/v1/model-versions/by-hash/HASH -> civitai:MODEL@VERSION.
    `get(url)` returns the decoded JSON, or None for a hash civitai does not know."""

    def lookup(digest: str) -> str | None:
        found = get(f"{endpoint.rstrip('/')}/api/v1/model-versions/by-hash/{digest}")
        return f"civitai:{found['modelId']}@{found['id']}" if found else None

    return lookup
