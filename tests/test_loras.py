"""Warm LoRAs: a repeat request neither reads nor injects its LoRA, gets the same image as a cold
one, and plain requests stay exactly those of a fresh server."""

import logging
import threading
import warnings

import numpy as np
import pytest
from helpers import logged
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image

from sdcog.adapters import loras
from sdcog.common.cancel import PredictionCancelledError
from sdcog.common.families import PIPELINE_KINDS
from sdcog.generate import Generator
from sdcog.request.request import Request

SMALL = {"width": 128, "height": 128, "num_inference_steps": 3, "seed": 4}


@pytest.fixture(scope="module", params=list(PIPELINE_KINDS))
def family(request) -> str:
    return request.param


@pytest.fixture
def generator(make_weights, family) -> Generator:
    return Generator(make_weights(family))


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """The LoRA files read (each read is a load into the model)."""
    read: list[str] = []
    real = loras.load_file

    def load_file(path):
        read.append(path.name)
        return real(path)

    monkeypatch.setattr(loras, "load_file", load_file)
    return read


def pixels(generator: Generator, refs: tuple[str, ...] = (), scales=None) -> np.ndarray:
    request = Request(prompt="a cat", lora_weights=refs,
                      lora_scales=scales or (1.0,) * len(refs), **SMALL)  # fmt: skip
    [path] = generator(request).paths
    return np.asarray(Image.open(path))


def wrappers(generator: Generator) -> int:
    return sum(isinstance(m, BaseTunerLayer) for model in generator.loras.models
               for m in model.modules())  # fmt: skip


def test_a_warm_lora_is_neither_read_nor_injected_and_gives_the_same_image(
    generator, adapter_refs, family, loads
):
    a = adapter_refs[family]["a"]
    cold = pixels(generator, (a,))
    assert len(loads) == 1
    assert np.array_equal(pixels(generator, (a,)), cold)
    assert len(loads) == 1


def test_plain_requests_run_the_pinned_model_exactly(generator, make_weights, adapter_refs, family):
    fresh = pixels(Generator(make_weights(family)))
    refs = adapter_refs[family]
    pixels(generator, (refs["a"],))
    pixels(generator, (refs["a"], refs["b"]), (0.7, -0.4))
    assert wrappers(generator) == 0  # parked: the original layers are in place
    assert np.array_equal(pixels(generator), fresh)


def test_other_warm_loras_change_nothing(generator, make_weights, adapter_refs, family):
    refs = adapter_refs[family]
    cold_b = pixels(Generator(make_weights(family)), (refs["b"],))
    pixels(generator, (refs["a"],))
    pixels(generator, (refs["kohya"],))
    assert np.array_equal(pixels(generator, (refs["b"],)), cold_b)
    assert len(generator.loras.warm) == 3


def test_loading_beside_warm_loras_is_quiet(generator, adapter_refs, family):
    """transformers reports the warm LoRAs' text-encoder weights as MISSING from each new LoRA's
    file, and peft warns of several adapters: both by design here, so neither is shown."""
    refs = adapter_refs[family]
    pixels(generator, (refs["a"],))
    with (
        logged("transformers.integrations.peft") as messages,
        warnings.catch_warnings(record=True) as warned,
    ):
        pixels(generator, (refs["b"],))
    assert not messages and not [w for w in warned if "peft_config" in str(w.message)]


@pytest.mark.parametrize(
    ("rows", "shown"),
    [
        (["x.q_proj.lora_A.lora_old.weight | MISSING | "], False),  # another LoRA's
        (["x.q_proj.lora_A.lora_new.weight | MISSING | "], True),  # this LoRA's own
        (["x.q_proj.lora_A.lora_old.weight | UNEXPECTED | "], True),
    ],
)
def test_a_load_report_naming_this_lora_or_other_faults_still_shows(rows, shown):
    message = "\n".join(
        ["CLIPTextModel LOAD REPORT from: None", "Key | Status | ", "---+---", *rows]
    )
    record = logging.LogRecord("transformers.integrations.peft", logging.WARNING, "", 0, message,
                               None, None)  # fmt: skip
    assert loras.OtherLorasReport("lora_new").filter(record) is shown


def test_the_least_recently_used_go_first(generator, adapter_refs, family, loads, monkeypatch):
    monkeypatch.setattr(loras, "WARM_LORAS", 2)
    refs = adapter_refs[family]
    for name in ("a", "b", "kohya"):
        pixels(generator, (refs[name],))
    assert len(generator.loras.warm) == 2 and len(loads) == 3
    pixels(generator, (refs["kohya"],))  # warm
    pixels(generator, (refs["a"],))  # evicted: read again
    assert len(loads) == 4
    monkeypatch.setattr(loras, "WARM_BYTES", 1)  # only the request's own stay
    pixels(generator, (refs["b"],))
    assert len(generator.loras.warm) == 1


def test_the_same_lora_twice_adds_its_scales(generator, adapter_refs, family):
    a = adapter_refs[family]["a"]
    assert np.array_equal(pixels(generator, (a, a), (0.25, 0.5)), pixels(generator, (a,), (0.75,)))


def test_a_lora_that_does_not_fit_drops_the_warm_ones_cleanly(
    generator, make_weights, adapter_refs, family
):
    fresh = pixels(Generator(make_weights(family)))
    a = adapter_refs[family]["a"]
    with_a = pixels(generator, (a,))
    other = adapter_refs["sdxl" if family == "sd" else "sd"]["a"]
    with pytest.raises(ValueError, match="lora_weights: .* does not fit this model"):
        pixels(generator, (a, other))
    assert generator.loras.warm == {} and wrappers(generator) == 0
    assert np.array_equal(pixels(generator), fresh)
    assert np.array_equal(pixels(generator, (a,)), with_a)


def test_the_lora_is_merged_for_the_request_not_computed_per_step(
    generator, adapter_refs, family, monkeypatch
):
    calls: list[str] = []
    real = loras.WarmLoras._merged

    def watching(self, names):
        for model in self.models:
            for name, module in model.named_modules():
                if name.endswith("lora_A." + names[0]):
                    module.register_forward_hook(lambda *_, n=name: calls.append(n))
        return real(self, names)

    monkeypatch.setattr(loras.WarmLoras, "_merged", watching)
    pixels(generator, (adapter_refs[family]["a"],))
    assert calls == []  # merged: the LoRA layers themselves never ran


def test_a_cancelled_request_neither_downloads_nor_loads(generator, adapter_refs, family, loads):
    cancelled = threading.Event()
    cancelled.set()
    request = Request(prompt="a cat", lora_weights=(adapter_refs[family]["b"],), **SMALL)
    with pytest.raises(PredictionCancelledError):
        generator(request, cancelled)
    assert loads == []
    assert wrappers(generator) == 0


def test_a_lora_request_denoises_with_plain_layers(generator, adapter_refs, family):
    # The LoRA is merged into the weights: the UNet runs without the wrappers' per-call work.
    seen: list[int] = []
    unet = generator.pipelines.base["txt2img"].unet
    handle = unet.register_forward_pre_hook(lambda *_: seen.append(wrappers(generator)))
    try:
        plain = pixels(generator)
        lora = pixels(generator, (adapter_refs[family]["a"],))
    finally:
        handle.remove()
    assert seen and set(seen) == {0}
    assert not np.array_equal(plain, lora)
