"""The generator in-process on tiny weights: what the server tests cannot observe directly."""

import threading
from pathlib import Path

import pytest
import torch

from sdcog.denoise import denoise
from sdcog.generate import Generator
from sdcog.request import images
from sdcog.request.request import ControlSlot, Request
from sdcog.serving.runner import SLOTS


@pytest.fixture(scope="module")
def generator(tiny_weights) -> Generator:
    return Generator(tiny_weights)


def unet_batches(generator: Generator) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    sizes: list[int] = []
    unet = generator.pipelines.base["txt2img"].unet
    handle = unet.register_forward_pre_hook(lambda _, args: sizes.append(args[0].shape[0]))
    return sizes, handle


def test_three_modes_share_one_set_of_components(generator):
    pipes = generator.pipelines.base
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        assert len({id(getattr(pipe, name)) for pipe in pipes.values()}) == 1, name


@pytest.mark.parametrize(("guidance_scale", "unet_batch"), [(7.5, 2), (1.0, 1), (0.0, 1)])
def test_guidance_at_or_below_one_halves_unet_work(generator, guidance_scale, unet_batch):
    sizes, handle = unet_batches(generator)
    try:
        generator(
            Request(
                prompt="x",
                guidance_scale=guidance_scale,
                num_inference_steps=2,
                width=128,
                height=128,
            )
        )
    finally:
        handle.remove()
    assert sizes == [unet_batch, unet_batch]


def test_outputs_are_denoised_in_memory_bounded_batches(generator, monkeypatch):
    monkeypatch.setattr(denoise, "MAX_BATCH_PIXELS", 2 * 128 * 128)
    sizes, handle = unet_batches(generator)
    try:
        files = generator(
            Request(
                prompt="x",
                num_outputs=5,
                guidance_scale=1,
                num_inference_steps=1,
                width=128,
                height=128,
            )
        )
    finally:
        handle.remove()
    assert sizes == [2, 2, 1]
    assert len(files.paths) == 5


def test_file_names_carry_index_seed_and_a_prediction_token(generator):
    first = generator(
        Request(prompt="x", seed=11, num_outputs=2, num_inference_steps=1, width=128, height=128)
    ).paths
    assert [f.name[: len("out-0-seed11-")] for f in first] == ["out-0-seed11-", "out-1-seed12-"]
    second = generator(
        Request(prompt="x", seed=11, num_outputs=2, num_inference_steps=1, width=128, height=128)
    ).paths
    assert {f.name for f in first}.isdisjoint(f.name for f in second)


def test_outputs_are_removed_once_no_slot_can_still_be_sending_them(generator):
    # Cog reads a prediction's files after it returns, while the other slot's prediction runs:
    # the last SLOTS predictions' folders stay, older ones go.
    request = Request(prompt="x", num_inference_steps=1, width=128, height=128)
    folders = [generator(request).paths[0].parent for _ in range(SLOTS + 1)]
    assert [f.exists() for f in folders] == [False] + [True] * SLOTS


def test_native_size_comes_from_the_model(generator):
    assert generator.pipelines.native_size == 512


def test_setup_without_weights_says_what_to_run(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="script/download-weights"):
        Generator(tmp_path)


def test_setup_loads_straight_to_the_device_without_dispatch_hooks(generator):
    # device_map=<device> loads each file onto the device; it must not leave accelerate's
    # per-module hooks (a cost on every call) or a device-mapped pipeline (which refuses .to()).
    pipe = generator.pipelines.base["txt2img"]
    models = [pipe.unet, pipe.vae, pipe.text_encoder, generator.safety.checker]
    assert not any(hasattr(m, "_hf_hook") for model in models for m in model.modules())
    assert not pipe._is_pipeline_device_mapped()
    assert {p.device.type for model in models for p in model.parameters()} == {"cpu"}


class Counted:
    """The annotators, counting their calls (and making them)."""

    def __init__(self, annotators) -> None:
        self.annotators, self.calls = annotators, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.annotators(*args, **kwargs)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"deepcache_interval": 2, "deepcache_branch": 11}, r"^deepcache_branch: "),
        ({"prompt": "a red cat, " * 200}, r"^prompt: \d+ tokens is more than the 600"),
        ({"negative_prompt": "blurry, " * 400}, r"^negative_prompt: \d+ tokens"),
        ({"refine": "expert_ensemble_refiner"}, r"^refine: only SDXL builds"),
    ],
)
def test_checks_run_before_any_download_or_annotator(
    generator, adapter_refs, file_server, control_image, monkeypatch, inputs, message
):
    # A LoRA no earlier request fetched, and a ControlNet whose image needs annotating: a check
    # that failed after them would show as a download and an annotator call.
    lora = file_server.put(
        f"unfetched/{abs(hash(message))}.safetensors", adapter_refs["sd"]["a_bytes"]
    )
    annotators = Counted(generator.controlnets.annotators)
    monkeypatch.setattr(generator.controlnets, "annotators", annotators)
    slot = ControlSlot(1, "canny", control_image)
    request = Request(**{"prompt": "x", "lora_weights": (lora,), "lora_scales": (1.0,),
                         "controlnets": (slot,), "num_inference_steps": 2, "width": 128,
                         "height": 128, **inputs})  # fmt: skip
    with pytest.raises(ValueError, match=message):
        generator(request)
    assert file_server.count(lora.rsplit("/", 1)[1]) == 0
    assert annotators.calls == 0


def test_outputs_are_encoded_while_the_safety_checker_runs(generator, monkeypatch):
    """Encoding is off the critical path: it has begun before the checker returns, and only
    the kept images are written."""
    encoding = threading.Event()
    real_encode, real_check = images.encode_image, generator.safety.keep_unflagged
    monkeypatch.setattr(images, "encode_image",
                        lambda *args: encoding.set() or real_encode(*args))  # fmt: skip

    def check(results):
        overlapped.append(encoding.wait(timeout=30))  # the checker waits for the encoder
        kept, flagged = real_check(results)
        return kept[1:], [results[0][0], *flagged]  # the first image left out, as if flagged

    overlapped: list[bool] = []
    monkeypatch.setattr(generator.safety, "keep_unflagged", check)
    generation = generator(Request(prompt="x", num_outputs=3, num_inference_steps=2,
                                   width=128, height=128, seed=5))  # fmt: skip
    assert overlapped == [True]
    assert [(o.index, o.seed) for o in generation.outputs] == [(0, 6), (1, 7)]
    assert sorted(p.name.split("-")[2] for p in generation.paths[0].parent.iterdir()) == [
        "seed6", "seed7"]  # fmt: skip


@pytest.mark.slow  # about 10 s or more: the fast tier leaves it to script/test --all
def test_the_runtime_starts_without_torchvision_noise():
    """transformers' "requires torchvision ... falling back" lines are nothing a user can act on
    (the PIL processors are the ones used): the runtime filters them out."""
    import subprocess
    import sys

    def run(code: str) -> str:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True)  # fmt: skip
        return done.stdout + done.stderr

    processor = "import transformers; transformers.CLIPImageProcessor()"
    assert "torchvision" not in run(f"import sdcog.generate; {processor}")
    assert "requires torchvision" in run(processor)  # the noise the filter removes
