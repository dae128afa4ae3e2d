"""ControlNets: the pinned models (loaded once), and per request the models, control maps and
pipeline arguments for up to three slots.

A kind is served by its own pin entry (weights/controlnet_<kind>/, e.g. lllyasviel's SD 1.5
ControlNets) or, for SDXL, by xinsir's union model (weights/controlnet_union/) in the kind's
control mode. A slot's `model` replaces the pinned one with a diffusers-format ControlNet fetched
through the adapter cache for this request.
"""

import inspect
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel, ControlNetUnionModel, ModelMixin
from PIL import Image

from ..common.families import Family
from ..fetch.downloads import AdapterCache
from ..request.control_slots import ControlSlot
from .annotators import Annotators

# kind -> the pin entry of a ControlNet trained for it (openpose's serves openpose_face too).
KIND_ENTRIES = {
    "canny": "controlnet_canny",
    "depth": "controlnet_depth",
    "openpose": "controlnet_openpose",
    "openpose_face": "controlnet_openpose",
    "lineart": "controlnet_lineart",
    "softedge": "controlnet_softedge",
    "scribble": "controlnet_scribble",
    "tile": "controlnet_tile",
}
UNION_ENTRY = "controlnet_union"
# kind -> control mode of xinsir/controlnet-union-sdxl-1.0 (0 pose, 1 depth, 2 thick lines,
# 3 thin lines); it has no tile mode.
UNION_MODES = {
    "openpose": 0, "openpose_face": 0, "depth": 1, "softedge": 2, "scribble": 2, "canny": 3,
    "lineart": 3,
}  # fmt: skip
CLASSES = {"ControlNetModel": ControlNetModel, "ControlNetUnionModel": ControlNetUnionModel}


def check_fits(config: dict, unet_config: Any, what: str) -> None:
    """A ControlNet mirrors its UNet's encoder: the same text width and SDXL's extra inputs."""
    kind = config.get("_class_name")
    if not isinstance(kind, str) or kind not in CLASSES:
        raise ValueError(
            f"{what} is a {str(kind)[:100]}, not a ControlNet (one of {', '.join(CLASSES)})"
        )
    for key in (
        "cross_attention_dim",
        "addition_embed_type",
        "projection_class_embeddings_input_dim",
    ):
        if config.get(key) != getattr(unet_config, key):
            raise ValueError(
                f"{what} is a ControlNet for another model family ({key} {config.get(key)}, "
                f"this model's is {getattr(unet_config, key)})"
            )


def load_controlnet(
    folder: Path, unet_config: Any, dtype: torch.dtype, device: Any, what: str
) -> ModelMixin:
    """A diffusers-format ControlNet folder, checked against the UNet before its weights load."""
    config = json.loads((folder / "config.json").read_text())
    check_fits(config, unet_config, what)
    variant = "fp16" if (folder / "diffusion_pytorch_model.fp16.safetensors").exists() else None
    try:
        return CLASSES[config["_class_name"]].from_pretrained(
            folder, dtype=dtype, variant=variant, local_files_only=True, device_map=str(device)
        )
    except Exception as e:  # a config or weights diffusers cannot build a model from
        raise ValueError(
            f"{what} could not be loaded as a ControlNet ({type(e).__name__}: {e})"
        ) from None


@dataclass
class Steering:
    """What a request's ControlNets add to one pipeline call."""

    models: list[ModelMixin]
    modes: list[int] | None  # union control modes; None for plain ControlNets
    maps: list[Image.Image]
    scales: list[float]
    starts: list[float]
    ends: list[float]

    @property
    def controlnet(self) -> ModelMixin | list[ModelMixin]:
        """For from_pipe: one model, or a list that the pipeline wraps as a multi-ControlNet."""
        return self.models[0] if len(self.models) == 1 else self.models

    def arguments(self, pipe: Any) -> dict[str, Any]:
        one = len(self.models) == 1
        # txt2img pipelines take the control map as `image`, the others as `control_image`.
        params = inspect.signature(pipe.__call__).parameters
        key = "control_image" if "control_image" in params else "image"
        args = {
            key: self.maps[0] if one else self.maps,
            "controlnet_conditioning_scale": self.scales[0] if one else self.scales,
            "control_guidance_start": self.starts[0] if one else self.starts,
            "control_guidance_end": self.ends[0] if one else self.ends,
        }
        if self.modes is not None:  # the union pipelines take flat lists, one entry a slot
            args.update({key: self.maps, "control_mode": self.modes})
        return args


class ControlNets:
    def __init__(self, weights_dir: Path, family: Family, unet: Any, cache: AdapterCache) -> None:
        self.family = family  # the build's
        self.dtype, self.device = unet.dtype, unet.device
        self.cache = cache
        entries = sorted({*KIND_ENTRIES.values(), UNION_ENTRY})
        self.pinned = {
            entry: load_controlnet(
                weights_dir / entry, unet.config, self.dtype, self.device, f"[{entry}]"
            )
            for entry in entries
            if (weights_dir / entry / "config.json").exists()
        }
        if self.pinned:
            print(f"ControlNets: {', '.join(self.pinned)}")
        self.annotators = Annotators(weights_dir, self.device)

    def prepare(
        self,
        slots: tuple[ControlSlot, ...],
        images: list[Image.Image],
        size: tuple[int, int],
        unet_config: Any,
        stop: threading.Event | None = None,
    ) -> Steering | None:
        """Models, modes and maps (at the output size) for the request's slots, on the model
        whose UNet has `unet_config`; `stop`, once set, ends a model's download."""
        if not slots:
            return None
        models, modes = zip(*(self._model(slot, unet_config, stop) for slot in slots), strict=True)
        _check_mix(slots, modes)
        unions = [mode is not None for mode in modes]
        maps = [self._map(slot, image, size) for slot, image in zip(slots, images, strict=True)]
        for slot in slots:
            print(
                f"{slot.name}: {slot.kind} at scale {slot.conditioning_scale}, steps "
                f"{slot.start}-{slot.end}, {'annotated' if slot.preprocess else 'map as given'}"
            )
        return Steering(
            models=list(models),
            modes=list(modes) if all(unions) else None,
            maps=maps,
            scales=[slot.conditioning_scale for slot in slots],
            starts=[slot.start for slot in slots],
            ends=[slot.end for slot in slots],
        )

    def check(self, slots: tuple[ControlSlot, ...], unet_config: Any) -> None:
        """What can be checked before any download or annotator: a pinned ControlNet serves
        each slot that names no model of its own, fits the model whose UNet has `unet_config`
        (a request's base_model may be of another family), and those run together."""
        pinned = [slot for slot in slots if not slot.model]
        for slot in pinned:
            what = f"{slot.name}: the build's {slot.kind} ControlNet"
            check_fits(self._pinned(slot)[0].config, unet_config, what)
        _check_mix(pinned, [self._pinned(slot)[1] for slot in pinned])

    def _model(
        self, slot: ControlSlot, unet_config: Any, stop: threading.Event | None
    ) -> tuple[ModelMixin, int | None]:
        if not slot.model:
            return self._pinned(slot)
        folder = self.cache.fetch_model(slot.model, stop)
        what = f"{slot.name}_model: {slot.model.text}"
        model = load_controlnet(folder, unet_config, self.dtype, self.device, what)
        return model, self._union_mode(slot, model)

    def _pinned(self, slot: ControlSlot) -> tuple[ModelMixin, int | None]:
        """The build's ControlNet for the slot's kind, and its union mode (None: not union)."""
        if (entry := KIND_ENTRIES[slot.kind]) in self.pinned:
            model = self.pinned[entry]
        elif UNION_ENTRY in self.pinned and slot.kind in UNION_MODES:
            model = self.pinned[UNION_ENTRY]
        else:
            entries = f"[{entry}]"
            if self.family.traits.union_controlnet and slot.kind in UNION_MODES:
                entries = f"[{UNION_ENTRY}] (or {entries})"
            raise ValueError(
                f"{slot.name}: this build has no {slot.kind} ControlNet; pin {entries} in "
                "weights/pins.toml and run script/download-weights"
            )
        return model, self._union_mode(slot, model)

    @staticmethod
    def _union_mode(slot: ControlSlot, model: ModelMixin) -> int | None:
        if not isinstance(model, ControlNetUnionModel):
            return None
        if slot.kind not in UNION_MODES:
            raise ValueError(
                f"{slot.name}: the union ControlNet has no {slot.kind} mode; pin "
                f"[{KIND_ENTRIES[slot.kind]}] for it"
            )
        return UNION_MODES[slot.kind]

    def _map(self, slot: ControlSlot, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        """The control map at the output size: annotated from the resized image, or the given
        map resized."""
        image = image.resize(size, Image.Resampling.LANCZOS)
        if not slot.preprocess:
            return image
        return self.annotators(slot.kind, image, f"{slot.name}_preprocess")


def _check_mix(slots: list[ControlSlot] | tuple[ControlSlot, ...], modes: list | tuple) -> None:
    """The union ControlNet (modes not None) runs with union slots only."""
    unions = [mode is not None for mode in modes]
    if any(unions) and not all(unions):
        mixed = slots[unions.index(False)]
        raise ValueError(
            f"{mixed.name}: its ControlNet cannot run together with the union ControlNet "
            "of the other slots; use kinds the union model serves, or one model kind only"
        )
