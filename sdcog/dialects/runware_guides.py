"""The images a Runware task steers with (seedImage, maskImage, a ControlNet's guideImage, an
IP-Adapter's guide images) and the settings that come with them, as predict() inputs."""

import re
from typing import Any

from . import FieldError, ModelNames

# Runware's IP-Adapter AIR ids (its image inference reference, ipAdapters.model) and the file of
# h94/IP-Adapter each names (55@1 is the SDXL adapter for the ViT-bigG image encoder).
RUNWARE_IP_ADAPTERS = {
    "runware:55@1": "ip-adapter_sdxl", "runware:55@2": "ip-adapter-plus_sdxl_vit-h",
    "runware:55@3": "ip-adapter-plus-face_sdxl_vit-h", "runware:55@4": "ip-adapter_sdxl_vit-h",
    "runware:55@5": "ip-adapter_sd15", "runware:55@6": "ip-adapter-plus_sd15",
    "runware:55@7": "ip-adapter_sd15_light", "runware:55@8": "ip-adapter-plus-face_sd15",
    "runware:55@9": "ip-adapter-full-face_sd15", "runware:55@10": "ip-adapter_sd15_vit-G",
}  # fmt: skip
AIR = re.compile(r"^(urn:air:[^:]+:[^:]+:)?(?P<source>[a-z]+):\d+@\d+$")
IMAGE_UUID = re.compile(r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")


def fail(field: str, problem: str) -> FieldError:
    return FieldError("runware", tuple(field.split(".")), problem)


def controlnet(
    index: int, control: dict[str, Any], steps: int, build: ModelNames
) -> dict[str, Any]:
    field, model = f"controlNet.{index}", control["model"]
    kind, own = build.controlnet(model)
    if kind is None:
        raise fail(
            f"{field}.model",
            f"cannot tell which kind of control {model} is: name it by "
            "its repository, or list its AIR id under `air` in the build's ControlNet pin",
        )
    slot = f"controlnet_{index + 1}"
    inputs = {
        slot: kind,
        f"{slot}_image": image_input(f"{field}.guideImage", control["guideImage"]),
        f"{slot}_preprocess": False,  # Runware's guide images are control maps already
        f"{slot}_conditioning_scale": control.get("weight", 1.0),
        f"{slot}_start": fraction(control, "startStep", steps, default=0.0),
        f"{slot}_end": fraction(control, "endStep", steps, default=1.0),
    }
    if not own:
        if AIR.match(model):
            raise fail(f"{field}.model", f"{model} is not a ControlNet this build pins")
        inputs[f"{slot}_model"] = model  # another diffusers ControlNet, fetched for the request
    return inputs


def ip_adapter(adapters: list[dict[str, Any]], build: ModelNames) -> dict[str, Any]:
    """One IP-Adapter with one guide image (guideImage, or guideImages as the newer reference
    writes it): predict() takes one. The adapter is named by Runware's AIR id or by its file,
    and a file of h94/IP-Adapter's that the build does not pin is refused."""
    if len(adapters) > 1:
        raise fail("ipAdapters.1", "one IP-Adapter per task here; give the others their own task")
    adapter = adapters[0]
    model = adapter["model"]
    served = ", ".join(
        f"{air} ({file})" for air, file in RUNWARE_IP_ADAPTERS.items() if file in build.ip_adapters
    )
    stem = RUNWARE_IP_ADAPTERS.get(model) or model.removesuffix(".safetensors")
    if stem in RUNWARE_IP_ADAPTERS.values() and stem not in build.ip_adapters:
        named = model if stem == model else f"{model} ({stem})"
        raise fail(
            "ipAdapters.0.model",
            f"{named}: not an IP-Adapter file this build pins; it serves {served or 'none'}",
        )
    name = stem.lower().replace("_", "-")
    kind = "plus_face" if "plus-face" in name else "plus" if "plus" in name else "standard"
    if "ip-adapter" not in name and name not in ("standard", "plus"):
        raise fail(
            "ipAdapters.0.model",
            f"{model}: name the adapter by Runware's AIR id ({served or 'none pinned'}) or by "
            "its file (ip-adapter_sd15, ip-adapter-plus_sdxl_vit-h, ip-adapter-plus-face_sd15...)",
        )
    images = adapter.get("guideImages") or [adapter.get("guideImage")]
    field = "ipAdapters.0.guideImages" if "guideImages" in adapter else "ipAdapters.0.guideImage"
    if len(images) > 1 or images[0] is None:
        raise fail(field, "one guide image per adapter here")
    return {
        "ip_adapter": kind,
        "ip_adapter_image": image_input(field, images[0]),
        "ip_adapter_scale": adapter.get("weight", 1.0),
    }


def fraction(options: dict[str, Any], step_field: str, steps: int, default: float) -> float:
    """`<x>StepPercentage` / 100, or `<x>Step` / steps."""
    if f"{step_field}Percentage" in options:
        return options[f"{step_field}Percentage"] / 100
    if step_field in options:
        return min(options[step_field] / steps, 1.0)
    return default


def image_input(field: str, value: str) -> str:
    """A data URI or URL as is; bare base64 as a data URI. UUIDs name Runware's own storage."""
    if IMAGE_UUID.match(value):
        raise fail(
            field,
            "an image UUID names an image stored at Runware; give the image as a "
            "data URI, base64 or URL",
        )
    if value.startswith(("data:", "http://", "https://")):
        return value
    return f"data:application/octet-stream;base64,{value}"
