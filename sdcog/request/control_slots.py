"""A request's ControlNet slots: predict()'s controlnet_N, controlnet_N_image, ... as one value
each, checked on their own (the request checks how they combine with its other inputs)."""

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args

from ..fetch.references import Reference

# The control kinds predict() offers, and its numbered ControlNet slots (controlnet_1_* ...).
CONTROL_KINDS = (
    "canny", "depth", "openpose", "openpose_face", "lineart", "softedge", "scribble", "tile",
)  # fmt: skip
CONTROL_SLOTS = 3
# Replicate's fofr/*-multi-controlnet-lora models' names for the kinds above (their "illusion",
# a QR-code ControlNet, is not served here).
KIND_ALIASES = {
    "edge_canny": "canny", "depth_leres": "depth", "depth_midas": "depth",
    "soft_edge_hed": "softedge", "soft_edge_pidi": "softedge", "lineart_anime": "lineart",
}  # fmt: skip


@dataclass(frozen=True)
class ControlSlot:
    """One ControlNet of a request: predict()'s controlnet_N, controlnet_N_image, ..."""

    number: int
    kind: str
    image: Path
    conditioning_scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    preprocess: bool = True
    model: Reference | None = None  # given as text, parsed when the slot is built

    def __post_init__(self) -> None:
        if isinstance(self.model, str):
            object.__setattr__(self, "model", Reference.parse(self.model, f"{self.name}_model"))
        if self.kind not in CONTROL_KINDS:
            raise ValueError(f"{self.name}: {self.kind!r} is not one of {', '.join(CONTROL_KINDS)}")
        if not 0 <= self.start < self.end <= 1:
            raise ValueError(
                f"{self.name}_start: must be below {self.name}_end, both from 0 to 1 (got "
                f"{self.start} and {self.end})"
            )

    @property
    def name(self) -> str:
        return f"controlnet_{self.number}"

    @classmethod
    def from_inputs(cls, number: int, inputs: dict[str, Any]) -> "ControlSlot | None":
        """Slot `number` from predict()'s arguments, by name; None when the slot is unused."""
        name = f"controlnet_{number}"
        kind = inputs.get(name, "none")
        kind = KIND_ALIASES.get(kind, kind)
        values = {
            f.name: value
            for f in fields(cls)
            if (value := inputs.get(f"{name}_{f.name}")) is not None
        }
        if kind == "none":
            if "model" in values:
                raise ValueError(
                    f"{name}_model: given without a control kind; set {name} to one of "
                    f"{', '.join(CONTROL_KINDS)}"
                )
            if "image" in values:  # as fofr's models do: a slot's image stays while it is off
                print(f"{name}_image: ignored, {name} is none")
            return None
        if "image" not in values:
            raise ValueError(f"{name}: {kind} needs an image; give {name}_image")
        return cls(number=number, kind=kind, **typed(cls, values))


def typed(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """JSON numbers as the fields' types. Cog hands a float input sent as 1 over as an int, and
    diffusers rejects an int scale; JSON Schema counts 2.0 as an integer, and Python's range()
    rejects it. Lists become tuples (the dataclasses are frozen)."""
    types = {f.name: f.type for f in fields(cls)}
    typed = dict(values)
    for key, value in values.items():
        kinds = (types[key], *get_args(types[key]))
        if value is None:
            continue
        if float in kinds:
            typed[key] = tuple(map(float, value)) if isinstance(value, list) else float(value)
        elif int in kinds and isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{key}: must be a whole number (got {value})")
            typed[key] = int(value)
        elif isinstance(value, list):
            typed[key] = tuple(value)
    return typed
