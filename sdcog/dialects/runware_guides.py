"""The images a Runware task steers with (seedImage, maskImage, a ControlNet's guideImage, an
IP-Adapter's guide images) and the settings that come with them, as predict() inputs."""

import re
from typing import Any

from . import FieldError, ModelNames

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


def ip_adapter(adapters: list[dict[str, Any]]) -> dict[str, Any]:
    """One IP-Adapter with one guide image (guideImage, or guideImages as the newer reference
    writes it): predict() takes one."""
    if len(adapters) > 1:
        raise fail("ipAdapters.1", "one IP-Adapter per task here; give the others their own task")
    adapter = adapters[0]
    name = adapter["model"].lower().replace("_", "-")
    kind = "plus_face" if "plus-face" in name else "plus" if "plus" in name else "standard"
    if "ip-adapter" not in name and name not in ("standard", "plus"):
        raise fail(
            "ipAdapters.0.model",
            f"{adapter['model']}: name the adapter by its file "
            "(ip-adapter_sd15, ip-adapter-plus_sdxl_vit-h, ip-adapter-plus-face_sd15...)",
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
