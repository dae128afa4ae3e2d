"""Requests on other models: swapping between them, the RAM tier's bound, what must fit the
model, a per-request VAE, and the build's own model untouched through all of it."""

import dataclasses
import gc
import hashlib
import json
import os
import weakref
from pathlib import Path

import pytest
from helpers import shapes
from model_repos import hub_copy
from PIL import Image

from sdcog.common import memory
from sdcog.generate import Generator
from sdcog.request.request import Request
from sdcog.serving.settings import Settings

SMALL = {"prompt": "a lighthouse", "num_inference_steps": 3, "width": 256, "height": 256,
         "seed": 7}  # fmt: skip


@pytest.fixture(scope="module")
def generator(tiny_weights, model_repos, tmp_path_factory) -> Generator:
    settings = dataclasses.replace(
        Settings.from_env(),
        weights_dir=tiny_weights,
        hf_endpoint=model_repos.hub.url,
        civitai_endpoint=model_repos.files.url,
        model_cache_dir=tmp_path_factory.mktemp("models"),
        adapter_cache_dir=tmp_path_factory.mktemp("adapters"),
        private_networks=None,
    )
    return Generator(tiny_weights, settings)


def digest(generator: Generator, **inputs) -> str:
    """A digest of the outputs' pixels (their files also name the model they came from)."""
    generation = generator(Request(**(SMALL | inputs)))
    return "".join(hashlib.sha256(Image.open(p).tobytes()).hexdigest() for p in generation.paths)


@pytest.fixture(scope="module")
def baseline(generator) -> str:
    return digest(generator)


@pytest.fixture(autouse=True)
def builds_own_model_unchanged(generator, baseline):
    """After every case, the build's model gives exactly what it gave first."""
    yield
    assert digest(generator) == baseline


def test_a_then_b_then_a_gives_a_exactly(generator, model_repos, baseline):
    a = digest(generator, base_model="org/sd1")
    b = digest(generator, base_model="org/sd2")
    assert len({a, b, baseline}) == 3
    assert digest(generator, base_model="org/sd1") == a
    assert digest(generator, base_model=model_repos.urls["sdxl"]) != a


@pytest.mark.parametrize(
    "inputs",
    [
        {},
        {"scheduler": "K_EULER_ANCESTRAL"},
        {"deepcache_interval": 2},
        {"lora": "a"},
        {"embedding": "embedding"},
        {"num_outputs": 2, "prompt_weighting": "a1111", "clip_skip": 1},
    ],
    ids=["plain", "scheduler", "deepcache", "lora", "embedding", "batch"],
)
def test_the_builds_weights_by_another_name_give_the_builds_images(generator, adapter_refs, inputs):
    """A swapped model is served as the pinned one is: same bytes, whatever the request does."""
    inputs = dict(inputs)
    if name := inputs.pop("lora", None):
        inputs["lora_weights"] = (adapter_refs["sd"][name],)
    if name := inputs.pop("embedding", None):
        inputs["textual_inversions"] = (f"<tok>={adapter_refs['sd'][name]}",)
        inputs["prompt"] = "a <tok> lighthouse"
    assert digest(generator, base_model="org/pinned-copy", **inputs) == digest(generator, **inputs)


def test_the_ram_tier_keeps_its_bound_least_recently_used_out(generator):
    models = generator.models
    digest(generator, base_model="org/sd1")
    size = sum(p.numel() * p.element_size() for m in models.warm["base_model:org/sd1"].modules()
               for p in m.parameters())  # fmt: skip
    saved, models.ram_bytes = models.ram_bytes, int(size * 1.5)
    try:
        models.warm.clear()
        for name in ("org/sd1", "org/pinned-copy", "org/sd1-fp16"):
            digest(generator, base_model=name)
        assert list(models.warm) == ["base_model:org/pinned-copy", "base_model:org/sd1-fp16"]
        kept = models.warm["base_model:org/sd1-fp16"]
        digest(generator, base_model="org/sd1")  # back from disk, org/pinned-copy out
        assert list(models.warm) == ["base_model:org/sd1-fp16", "base_model:org/sd1"]
        assert models.warm["base_model:org/sd1-fp16"] is kept  # not reloaded
    finally:
        models.ram_bytes = saved


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            {"controlnet": "canny"},
            r"^controlnet_1: the build's canny ControlNet is a ControlNet "
            r"for another model family \(cross_attention_dim 32, this "
            r"model's is 48\)",
        ),
        ({"ip_adapter_image": True}, r"^ip_adapter_image: the build's IP-Adapters are for"),
        ({"lora": "a"}, r"^lora_weights: .* does not fit this model"),
        ({"refine": "base_image_refiner"}, r"^refine: only SDXL builds"),
        ({"embedding": "embedding"}, r"^textual_inversions: "),
    ],
    ids=["controlnet", "ip_adapter", "lora", "refiner", "embedding"],
)
def test_what_does_not_fit_the_model_is_refused_naming_it(
    generator, adapter_refs, tmp_path, inputs, message
):
    inputs = dict(inputs)
    shapes().save(tmp_path / "image.png")
    if inputs.pop("controlnet", None):
        inputs |= {"controlnets": (_slot(tmp_path / "image.png"),)}
    if inputs.pop("ip_adapter_image", None):
        inputs["ip_adapter_image"] = tmp_path / "image.png"
    if name := inputs.pop("lora", None):
        inputs["lora_weights"] = (adapter_refs["sd"][name],)
    if name := inputs.pop("embedding", None):
        inputs["textual_inversions"] = (f"<tok>={adapter_refs['sd'][name]}",)
    with pytest.raises(ValueError, match=message):
        generator(Request(**(SMALL | inputs | {"base_model": "org/sd2"})))


def _slot(image: Path):
    from sdcog.request.control_slots import ControlSlot

    return ControlSlot(number=1, kind="canny", image=image)


def test_a_per_request_vae_decodes_and_goes_again(generator, model_repos):
    with_vae = digest(generator, vae="org/vae-sd")
    assert with_vae != digest(generator)
    on_other = digest(generator, base_model="org/sd1", vae="org/vae-sd")
    assert on_other != digest(generator, base_model="org/sd1")
    with pytest.raises(ValueError, match=r"^vae: org/vae-sdxl is a VAE for another family"):
        generator(Request(**SMALL, vae="org/vae-sdxl"))
    assert digest(generator, vae="org/vae-sd") == with_vae


def test_an_sdxl_model_on_an_sd_build(generator, model_repos):
    """SDXL's inputs follow the request's model, not the build's."""
    marked = digest(generator, base_model=model_repos.air("sdxl"))
    plain = digest(generator, base_model=model_repos.air("sdxl"), apply_watermark=False)
    assert marked != plain
    with pytest.raises(ValueError, match=r"^refine: .* needs a refiner, and this build has none"):
        generator(Request(**SMALL, base_model="org/sdxl", refine="base_image_refiner"))


SIX = ("org/sd1", "org/sd2", "org/sdxl", "org/pinned-copy", "org/sd1-fp16",
       "emilianJR/chilloutmix_NiPrunedFp32Fix")  # fmt: skip


def _rss() -> int:
    gc.collect()
    memory.give_back()
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_models_dropped_from_memory_are_released(generator):
    """MODEL_RAM_GB holds on every device: a model dropped from the RAM tier is gone from the
    process, and loading six models round after round leaves the RSS where the first round
    did (on a CPU the device and RAM tiers are one)."""
    models = generator.models
    saved, models.ram_bytes = models.ram_bytes, 20_000_000  # about one tiny model
    try:
        models.warm.clear()
        dropped: list[weakref.ref] = []
        rounds = []
        for _ in range(3):
            for name in SIX:
                digest(generator, base_model=name)
                dropped += [weakref.ref(m) for m in models.warm.values()]
            rounds.append(_rss())
        alive = {id(m) for m in models.warm.values()}
        assert [ref for ref in dropped if ref() is not None and id(ref()) not in alive] == []
        assert rounds[-1] < rounds[0] * 1.1, [f"{r / 1e6:.0f} MB" for r in rounds]
    finally:
        models.ram_bytes = saved


@pytest.mark.parametrize(
    ("name", "file", "changes", "refusal"),
    [
        ("org/wider", "unet/config.json", {"block_out_channels": [32, 64, 64]},
         r"'s files do not load as its configs describe them: .*shape"),
        ("org/unknown-module", "model_index.json", {"unet": ["diffusers", "NoSuchUNet"]},
         r"'s files do not load as its configs describe them"),
        ("org/huge", "unet/config.json", {"sample_size": 320},
         r"'s native size \(320 latents x 8\) is not a size"),
        ("org/inpainting", "unet/config.json", {"in_channels": 9},
         r" is an inpainting model \(9 input channels\): it serves inpainting only"),
    ],
)  # fmt: skip
def test_a_model_whose_files_do_not_serve_is_refused_naming_the_input(
    generator, model_repos, name, file, changes, refusal
):
    config = hub_copy(model_repos, name) / file
    config.write_text(json.dumps(json.loads(config.read_text()) | changes))
    with pytest.raises(ValueError, match=rf"^base_model: {name}{refusal}"):
        generator(Request(**SMALL, base_model=name))


def test_previews_of_a_model_of_another_family_are_refused(generator):
    """The build's preview decoder (TAESD on an SD build) decodes its own family's latents: an
    SDXL base_model's would be noise. SD 2.x shares SD 1.x's latent space."""
    refusal = r"^preview_every: this build's preview decoder is for SD 1.x latents, and org/sdxl "
    with pytest.raises(ValueError, match=refusal + r"is SDXL; set preview_every to 0$"):
        generator(Request(**SMALL, base_model="org/sdxl", preview_every=1))
    assert digest(generator, base_model="org/sd2", preview_every=1)


def test_a_single_files_model_hash_is_in_its_images(generator, model_repos):
    """civitai finds a model by its file's AutoV2 hash: written for a model from a single file
    (the download cache named the file by its SHA-256), not for a repository's."""
    from sdcog.outputs import infotext

    def fields(**inputs) -> str:
        [path] = generator(Request(**(SMALL | inputs))).paths
        return infotext.read(Image.open(path))

    expected = hashlib.sha256((model_repos.root / "sd1.safetensors").read_bytes()).hexdigest()[:10]
    single = fields(base_model=model_repos.urls["sd1"])
    assert f"Model hash: {expected}, Model: sd1-ldm," in single
    assert "Model hash" not in fields(base_model="org/sd1")
