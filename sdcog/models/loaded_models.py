"""The model each request runs on: the build's, or its base_model (and vae) loaded from the disk
tier (model_files.py) and kept warm.

Two tiers in memory. The device holds the build's model always, and at most one requested model
(with its VAE) beside it: the one in use. Requested models not in use wait in CPU RAM, at most
MODEL_RAM_GB of them, least recently used out first; coming back costs a host-to-device copy,
not a reload. ControlNets, IP-Adapters, the safety checker and the SDXL refiner are the build's
and stay shared. On a CPU the two tiers are one: MODEL_RAM_GB bounds the models not in use.
"""

import gc
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.models.attention_processor import AttnProcessor2_0

from ..adapters.ip_adapters import IPAdapters
from ..adapters.loras import WarmLoras
from ..common.families import Facts
from ..common.pins import pin_file_of
from ..request.model_choice import Choice, ModelChoice, ModelReference
from ..serving.settings import Settings
from . import model_files
from .model_files import ModelFiles
from .pipelines import Pipelines, device_and_dtype


@dataclass
class Model:
    name: str  # what the logs call it: "the build's model", or the reference
    pipelines: Pipelines
    loras: WarmLoras
    facts: Facts
    folder: Path  # its diffusers folder (base/ for the build's)

    def modules(self) -> list[torch.nn.Module]:
        return self.pipelines.own_modules()


class LoadedModels:
    def __init__(
        self, pinned: Model, ip_adapters: IPAdapters, settings: Settings, weights_dir: Path
    ) -> None:
        self.pinned, self.ip_adapters = pinned, ip_adapters
        self.fast_path, self.ram_bytes = settings.fast_path, settings.model_ram_bytes
        self.device, dtype = device_and_dtype()
        self.files = ModelFiles(settings, weights_dir, dtype)
        self.choice = ModelChoice(pin_file_of(weights_dir), settings.allowed_models)
        # key -> a requested Model or VAE, least recently used first; the one in use is on
        # the device, the others in CPU RAM.
        self.warm: OrderedDict[str, Model | AutoencoderKL] = OrderedDict()
        self.on_device: list[Model | AutoencoderKL] = []  # of those, the ones on the device

    def chosen(
        self, choice: Choice, fits: Callable[[Facts], None], stop: threading.Event | None
    ) -> tuple[Model, AutoencoderKL | None]:
        """The chosen model on the device, and its requested vae (None: its own), which a patch
        swaps in (patches.py); `fits(facts)` refuses a model the rest of the request does not
        fit, before its weights are fetched when they are not on disk yet."""
        base, vae_reference = choice.base_model, choice.vae
        model = self.pinned if base is None else self._model(base, fits, stop)
        if base is None:
            fits(model.facts)
        vae = None
        if vae_reference is not None:
            vae = self._vae(vae_reference, model, stop)
        self._place(in_use=[m for m in (model, vae) if m is not None and m is not self.pinned])
        return model, vae

    def _model(
        self, reference: ModelReference, fits: Callable[[Facts], None], stop: threading.Event | None
    ) -> Model:
        key = f"base_model:{reference.text}"
        if isinstance(model := self.warm.get(key), Model):
            self.warm.move_to_end(key)
            fits(model.facts)
            print(f"base_model: {reference.name} ({model.facts.family}) from memory")
            return model

        read: list[Facts] = []  # from the configs, once: the check sees them first

        def check(folder: Path) -> None:
            read.append(Facts.of(folder, "base_model", reference.name))
            fits(read[-1])

        folder = self.files.folder(reference, check, stop)
        self._make_room(keep=[])
        self._place(in_use=[])  # the device's room goes to the one loading
        with _named_load_errors(reference):
            variant = model_files.variant(folder)
            pipelines = Pipelines.from_folder(folder, read[-1].family, self.fast_path, variant)
        if pipelines.family.traits.refiner and self.pinned.pipelines.refiner:
            pipelines.share_refiner(self.pinned.pipelines)
        self.ip_adapters.share_encoder(pipelines.base)
        facts = read[-1]
        model = Model(
            reference.name, pipelines, WarmLoras(pipelines.base["txt2img"]), facts, folder
        )
        print(f"base_model: {reference.name} ({facts.family}) loaded")
        self.warm[key] = model
        self.on_device.append(model)  # loaded straight to the device
        return model

    def _vae(
        self, reference: ModelReference, model: Model, stop: threading.Event | None
    ) -> AutoencoderKL:
        own = model.pipelines.base["txt2img"].vae
        model_vae = Path(own.config["_name_or_path"])
        key = f"vae:{reference.text}#{model_vae}"
        if isinstance(vae := self.warm.get(key), AutoencoderKL):
            self.warm.move_to_end(key)
            return vae

        def check(folder: Path) -> None:
            _check_vae(folder / "vae", reference, model)

        folder = self.files.folder(reference, check, stop, vae_of=model_vae)
        self._make_room(keep=[model])
        self._place(in_use=[model])
        _, dtype = device_and_dtype()
        with _named_load_errors(reference):
            vae = AutoencoderKL.from_pretrained(
                folder / "vae", dtype=dtype, local_files_only=True,
                variant=model_files.variant(folder), device_map=self.device,
            )  # fmt: skip
        vae.requires_grad_(False)
        vae.set_attn_processor(AttnProcessor2_0())  # as the model's own (pipelines._prepare)
        vae.enable_slicing()
        print(f"vae: {reference.name} loaded")
        self.warm[key] = vae
        self.on_device.append(vae)
        return vae

    def _place(self, in_use: list[Model | AutoencoderKL]) -> None:
        """What is in use on the device, every other requested model in CPU RAM: only what
        changes place is copied (nothing on a CPU). `on_device` lets go of the rest, so that
        what _make_room drops is freed."""
        for item in self.warm.values():
            wanted = any(item is used for used in in_use)
            if self.device != "cpu" and wanted != any(item is on for on in self.on_device):
                for module in _modules(item):
                    module.to(self.device if wanted else "cpu")
        self.on_device = list(in_use)

    def _make_room(self, keep: list[Model]) -> None:
        """Before a load: least recently used models out of RAM until those not in use (all
        but `keep` and the one about to load) fit in MODEL_RAM_GB."""
        waiting = [key for key, item in self.warm.items() if not any(item is k for k in keep)]
        while waiting and sum(_bytes(self.warm[key]) for key in waiting) > self.ram_bytes:
            key = waiting.pop(0)
            del self.warm[key]
            print(f"{key.split('#')[0]}: dropped from memory (MODEL_RAM_GB)")
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _modules(item: Model | AutoencoderKL) -> list[torch.nn.Module]:
    return item.modules() if isinstance(item, Model) else [item]


def _bytes(item: Model | AutoencoderKL) -> int:
    return sum(
        t.numel() * t.element_size()
        for module in _modules(item)
        for t in (*module.parameters(), *module.buffers())
    )


def _check_vae(folder: Path, reference: ModelReference, model: Model) -> None:
    config = json.loads((folder / "config.json").read_text())
    if config.get("_class_name") != "AutoencoderKL":
        raise ValueError(f"vae: {reference.name} is not an AutoencoderKL (a Stable Diffusion VAE)")
    scaling = config.get("scaling_factor", 0.18215)
    if scaling != model.facts.vae_scaling or config.get("latent_channels", 4) != 4:
        raise ValueError(
            f"vae: {reference.name} is a VAE for another family (scaling_factor {scaling}); "
            f"{model.name} is {model.facts.family} ({model.facts.vae_scaling})"
        )


@contextmanager
def _named_load_errors(reference: ModelReference) -> Iterator[None]:
    """What diffusers raises for files that passed every check and still do not load (weights
    of other shapes than their configs say, a module it does not know), naming the input."""
    try:
        yield
    except Exception as e:
        raise ValueError(
            f"{reference.input_name}: {reference.name}'s files do not load as its configs "
            f"describe them: {type(e).__name__}: {str(e)[:300]}"
        ) from None


@contextmanager
def vae_swapped(model: Model, vae: AutoencoderKL | None) -> Iterator[None]:
    """`vae` in every pipeline of the model (and the refiner that shares its VAE) for a
    with-block; the model's own back after it."""
    if vae is None:
        yield
        return
    pipes = [*model.pipelines.base.values(), *(model.pipelines.refiner or {}).values()]
    own = [pipe.vae for pipe in pipes]  # the refiner's is the build's
    for pipe in pipes:
        pipe.register_modules(vae=vae)
    try:
        yield
    finally:
        for pipe, vae_of_pipe in zip(pipes, own, strict=True):
            pipe.register_modules(vae=vae_of_pipe)
