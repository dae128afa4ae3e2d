import json
import subprocess

import pytest
from transformers import CLIPTokenizer

from sdcog.common.pins import PIN_FILE, PackagePin, component_files, read_pins
from sdcog.tools.cog_server import ROOT

PIN_FILES = {"sd": PIN_FILE, "sdxl": PIN_FILE.with_name("pins-sdxl.toml")}


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_tiny_weights_have_exactly_the_pinned_layout(make_weights, family):
    weights = make_weights(family)
    pins = read_pins(PIN_FILES[family])
    names = {pin.name for pin in pins}
    expected = set()
    for pin in pins:
        if isinstance(pin, PackagePin):  # the real face detector, as download-weights fetched it
            expected |= {f"{pin.name}/{pin.member.rsplit('/', 1)[1]}", f"{pin.name}/.pin.json"}
            continue
        index = weights / pin.name / "model_index.json"
        files = pin.files or component_files(json.loads(index.read_text()), names - {pin.name})
        expected |= {f"{pin.name}/{path}" for path in files}
    written = {str(p.relative_to(weights)) for p in weights.rglob("*") if p.is_file()}
    # Besides the pins: the configs tiny single-file checkpoints convert with (base_model),
    # and the pin file itself, which says what the folder holds wherever it is.
    extra = {path for path in written if path.startswith("single-file-configs/")}
    assert {path.split("/")[1] for path in extra} == {"sd1", "sd2", "sdxl"}
    assert written - extra == expected | {"pins.toml"}
    assert (weights / "pins.toml").read_bytes() == PIN_FILES[family].read_bytes()


def test_tiny_weights_are_deterministic(tiny_weights, tmp_path):
    from sdcog.tools.download_weights import sha256
    from sdcog.tools.tiny_weights import write_tiny_weights

    write_tiny_weights(tmp_path)
    for file in (
        "base/unet/diffusion_pytorch_model.safetensors",
        "safety/safety_checker/model.safetensors",
    ):
        assert sha256(tmp_path / file) == sha256(tiny_weights / file)


def test_tiny_model_keeps_the_real_latent_geometry(tiny_weights):
    import json

    vae = json.loads((tiny_weights / "base/vae/config.json").read_text())
    unet = json.loads((tiny_weights / "base/unet/config.json").read_text())
    assert len(vae["block_out_channels"]) == 4  # scale factor 2**3 = 8
    assert vae["latent_channels"] == unet["in_channels"] == 4
    assert unet["sample_size"] * 8 == 512


def test_tiny_sdxl_carries_the_real_pipeline_configs(sdxl_weights):
    # stabilityai's model_index.json files: the base zeroes an empty negative prompt, the
    # refiner does not and conditions on an aesthetic score.
    base = json.loads((sdxl_weights / "base/model_index.json").read_text())
    refiner = json.loads((sdxl_weights / "refiner/model_index.json").read_text())
    assert base["force_zeros_for_empty_prompt"] is True
    assert refiner["force_zeros_for_empty_prompt"] is False
    assert refiner["requires_aesthetics_score"] is True


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_tiny_tokenizers_are_clips_own(make_weights, family):
    """CLIP's vocabulary and merges: the ids the real tokenizer gives (this sentence's are
    CLIP's documented example), so an ordinary prompt counts its real number of tokens."""
    base = make_weights(family) / "base"
    for name in ("tokenizer", "tokenizer_2") if family == "sdxl" else ("tokenizer",):
        tokenizer = CLIPTokenizer.from_pretrained(base / name)
        assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
        prompt = "a photograph of an astronaut riding a horse on the moon, highly detailed, " * 10
        assert len(prompt) > 700 and len(tokenizer(prompt).input_ids) == 2 + 150


@pytest.mark.slow  # about 10 s or more: the fast tier leaves it to script/test --all
def test_the_script_says_each_part_in_one_line_without_progress_bars(tmp_path):
    done = subprocess.run([str(ROOT / "script/tiny-weights"), str(tmp_path / "w")],
                          capture_output=True, text=True, check=True, timeout=300)  # fmt: skip
    lines = done.stderr.strip().splitlines()
    parts = [line for line in lines if line.startswith("tiny sd weights: ")]
    assert len(parts) == 6 and parts[-1].startswith("tiny sd weights: done (")
    assert "\r" not in done.stderr and "%|" not in done.stderr, done.stderr[-1000:]
