"""LoRAs kept warm: loaded once, then kept in the model for the next request that uses them.

diffusers (through peft) wraps each layer a LoRA touches in a LoRA layer that holds every loaded
adapter. Between requests those wrappers are parked: the original layers go back in their place,
so a plain request runs the pinned model exactly as a fresh server does, with no wrapper's cost.
A request with LoRAs puts the wrappers back and activates its adapters: one already warm is
neither read nor injected again. At most WARM_LORAS adapters of WARM_BYTES in all are kept; the
least recently used go first.

For the request, the active adapters are merged into the weights they touch and the wrappers are
parked again while it runs (no LoRA work per step, and no wrapper's call), and those weights are
copied back from a saved copy afterwards: unmerging by subtraction would not give them back bit
for bit in fp16. The copy costs memory for the request's duration:
the touched weights once more (SD 1.5: ~0.2 GB in fp16 for a LoRA on every attention layer).
"""

import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file

from ..common import cancel

WARM_LORAS = 4
WARM_BYTES = 1 << 30

transformers_peft = logging.getLogger("transformers.integrations.peft")


@dataclass(frozen=True)
class Lora:
    reference: str
    path: Path  # named after its content's sha256 by the download cache
    scale: float
    input_name: str = "lora_weights"

    @property
    def adapter_name(self) -> str:
        return f"lora_{self.path.stem[:16]}"


class OtherLorasReport(logging.Filter):
    """transformers reports, as a LoRA loads into a text encoder, the weights of the LoRAs
    already warm there as MISSING from its file (they are in their own files): by design, so
    not shown. A report of anything else, this LoRA's own weights included, still is."""

    def __init__(self, adapter_name: str) -> None:
        super().__init__()
        self.adapter_name = adapter_name

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        rows = [line.split("|") for line in message.splitlines()[2:] if line.count("|") >= 2]
        rows = [(key.strip(), status.strip()) for key, status, *_ in rows if "---" not in key]
        return not rows or any(
            status != "MISSING" or f".{self.adapter_name}." in key for key, status in rows
        )


class WarmLoras:
    def __init__(self, pipe: DiffusionPipeline) -> None:
        self.pipe = pipe
        names = ("unet", "text_encoder", "text_encoder_2")  # what a LoRA may touch
        self.models = [model for name in names if (model := getattr(pipe, name, None))]
        self.warm: OrderedDict[str, int] = OrderedDict()  # adapter name -> bytes, oldest first
        self._parked: list[tuple[torch.nn.Module, str, BaseTunerLayer]] = []

    @contextmanager
    def applied(self, loras: list[Lora], stop: threading.Event | None = None) -> Iterator[None]:
        """The LoRAs, each at its scale, active for a with-block; parked again after it.
        `stop`, once set, ends the loading between two LoRAs."""
        if not loras:
            yield
            return
        scales: dict[str, float] = {}  # the same file twice: its scales add up
        for lora in loras:
            scales[lora.adapter_name] = scales.get(lora.adapter_name, 0.0) + lora.scale
        self._unpark()
        try:
            for lora in loras:
                cancel.raise_if_set(stop)
                self._load(lora)
                print(f"{lora.input_name}: {lora.reference} at scale {lora.scale}")
            self.pipe.set_adapters(list(scales), adapter_weights=list(scales.values()))
            self._evict(keep=set(scales))  # after: peft warns when an active adapter goes
            with self._merged(list(scales)):
                # The merge is in the original layers' weights: the request runs those, without
                # the wrappers' work on every call (an eighth of a step on a launch-bound GPU).
                self._park()
                yield
        finally:
            self._park()

    @contextmanager
    def _merged(self, names: list[str]) -> Iterator[None]:
        """The adapters merged into the weights they touch for a with-block (no per-step LoRA
        cost), then those weights copied back from a saved copy: exact, unlike unmerging."""
        saved: list[tuple[BaseTunerLayer, torch.Tensor]] = []
        try:
            for model in self.models:
                for module in model.modules():
                    if isinstance(module, BaseTunerLayer) and set(names) & set(module.lora_A):
                        weight = module.get_base_layer().weight
                        saved.append((module, weight.detach().clone()))
                        # In place: a fused QKV weight whose view this is gets the LoRA too.
                        module.merge(adapter_names=[n for n in names if n in module.lora_A])
            yield
        finally:
            with torch.no_grad():
                for module, weight in saved:
                    module.get_base_layer().weight.copy_(weight)
                    module.merged_adapters.clear()

    def _load(self, lora: Lora) -> None:
        name = lora.adapter_name
        if name in self.warm:
            self.warm.move_to_end(name)
            return
        before = self._lora_bytes()
        quiet = OtherLorasReport(name)
        transformers_peft.addFilter(quiet)
        try:
            with warnings.catch_warnings():  # several adapters in one model: what warm means
                warnings.filterwarnings("ignore", "Already found a `peft_config` attribute")
                self.pipe.load_lora_weights(load_file(lora.path), adapter_name=name)
        except Exception as e:  # whatever diffusers and peft make of keys and shapes
            self.pipe.unload_lora_weights()  # a half-loaded adapter cannot be told apart
            self.warm.clear()
            raise ValueError(
                f"{lora.input_name}: {lora.reference} does not fit this model: {str(e)[:500]}"
            ) from None
        finally:
            transformers_peft.removeFilter(quiet)
        size = self._lora_bytes() - before
        if not size:
            raise ValueError(
                f"{lora.input_name}: {lora.reference} holds no LoRA layer of this model"
            )
        self.warm[name] = size

    def _evict(self, keep: set[str]) -> None:
        """The least recently used adapters out, down to the bounds (this request's stay)."""
        while len(self.warm) > WARM_LORAS or sum(self.warm.values()) > WARM_BYTES:
            oldest = next((name for name in self.warm if name not in keep), None)
            if oldest is None:
                return
            self.pipe.delete_adapters(oldest)
            del self.warm[oldest]

    def _lora_bytes(self) -> int:
        return sum(
            p.numel() * p.element_size()
            for model in self.models
            for name, p in model.named_parameters()
            if "lora_" in name
        )

    def _park(self) -> None:
        """Every LoRA wrapper out, its original layer back in its place (nothing to do when
        they are out already)."""
        parked = []
        for model in self.models:
            for name, module in list(model.named_modules()):
                if isinstance(module, BaseTunerLayer):
                    parent_name, _, attribute = name.rpartition(".")
                    parent = model.get_submodule(parent_name)
                    parked.append((parent, attribute, module))
                    setattr(parent, attribute, module.get_base_layer())
        if parked:
            self._parked = parked

    def _unpark(self) -> None:
        for parent, attribute, wrapper in self._parked:
            setattr(parent, attribute, wrapper)
        self._parked = []
