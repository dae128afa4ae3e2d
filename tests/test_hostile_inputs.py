"""Hostile inputs through Cog's real server: each is refused before the work it would cost,
with a message that starts with the input's name and shows no path of the server; the server's
memory comes back afterwards and it goes on serving the same images."""

import base64
import io
import json

import psutil
import pytest
import torch
from helpers import data_uri, output_images
from PIL import Image
from safetensors.torch import save

from sdcog.common.limits import MAX_ASPECT, MAX_INPUT_PIXELS, MAX_LORAS
from sdcog.tools.soak import png_bomb

SMALL = {"prompt": "x", "num_inference_steps": 2, "width": 128, "height": 128, "seed": 3}


def png_header(width: int, height: int) -> str:
    """A data URI of a PNG that announces width x height pixels in a few hundred bytes (a
    decompression bomb as far as anything that decodes it is concerned)."""
    return "data:image/png;base64," + base64.b64encode(png_bomb(width, height)).decode()


HOSTILE_TENSORS = {
    "empty": {},
    "a scalar": {"<t>": torch.tensor(1.0)},
    "integers": {"<t>": torch.zeros(2, 32, dtype=torch.int8)},
    "booleans": {"<t>": torch.zeros(1, 32, dtype=torch.bool)},
    "eight dimensions": {"<t>": torch.zeros(1, 1, 1, 1, 1, 1, 1, 2)},
    "a zero-size row": {"<t>": torch.zeros(0, 32)},
    "a LoRA layer of the wrong shape": {
        f"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.{half}.weight": tensor
        for half, tensor in (("lora_A", torch.zeros(4, 7)), ("lora_B", torch.zeros(9, 4)))
    },
    "only kohya's alpha": {"lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4)},
}


@pytest.fixture(scope="module")
def hostile_files(file_server, make_weights) -> dict[str, str]:
    """name -> URL of a file that is valid safetensors with contents no loader expects, each
    with a ControlNet config.json beside it (the tiny canny model's)."""
    config = (make_weights("sd") / "controlnet_canny" / "config.json").read_bytes()
    urls = {}
    for n, (name, tensors) in enumerate(HOSTILE_TENSORS.items()):
        file_server.put(f"hostile/{n}/config.json", config)
        urls[name] = file_server.put(f"hostile/{n}/model.safetensors", save(tensors))
    return urls


def adapter_inputs(url: str) -> dict[str, dict]:
    control = data_uri(Image.new("RGB", (128, 128), "white"))
    return {
        "lora_weights": {"lora_weights": [url]},
        "textual_inversions": {"textual_inversions": [f"<t>={url}"]},
        "controlnet_1_model": {"controlnet_1": "canny", "controlnet_1_image": control,
                               "controlnet_1_model": url},
    }  # fmt: skip


def refused(server, input_name: str, **inputs) -> str:
    error = server.failure(**{**SMALL, **inputs})
    assert error.startswith(f"{input_name}: "), error
    assert "/tmp" not in error and "adapter-cache" not in error, error
    return error


@pytest.mark.parametrize("kind", HOSTILE_TENSORS)
def test_hostile_adapter_files_are_refused_by_name(sd_server, hostile_files, kind):
    baseline = sd_server.predict(**SMALL)["output"]
    for name, inputs in adapter_inputs(hostile_files[kind]).items():
        refused(sd_server, name, **inputs)
    assert sd_server.predict(**SMALL)["output"] == baseline


LOADS_AS_NOTHING = "could not be loaded as a ControlNet (ValueError: "


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"_class_name": ["ControlNetModel"]}, "is a ['ControlNetModel'], not a ControlNet"),
        ({"_class_name": "UNet2DConditionModel"}, "is a UNet2DConditionModel, not a ControlNet"),
        ({"block_out_channels": "wide"}, LOADS_AS_NOTHING + "Must provide the same number"),
        ({"layers_per_block": -3}, LOADS_AS_NOTHING + "Cannot load"),
        ({"conditioning_embedding_out_channels": [1, 2, 3, 4, 5, 6, 7]},
         LOADS_AS_NOTHING + "Cannot load"),
    ],
)  # fmt: skip
def test_hostile_controlnet_configs_are_refused_by_name(sd_server, file_server, make_weights,
                                                        config, says):  # fmt: skip
    """Refused for what the file is, after it was fetched (a failed download also names the
    input, so the message must say what was wrong with the file)."""
    tiny = make_weights("sd") / "controlnet_canny"
    folder = f"hostile-config/{abs(hash(json.dumps(config)))}"
    changed = json.loads((tiny / "config.json").read_text()) | config
    file_server.put(f"{folder}/config.json", json.dumps(changed).encode())
    weights = (tiny / "diffusion_pytorch_model.fp16.safetensors").read_bytes()
    url = file_server.put(f"{folder}/diffusion_pytorch_model.safetensors", weights)
    error = refused(sd_server, "controlnet_1_model", **adapter_inputs(url)["controlnet_1_model"])
    assert f"{url} {says}" in error, error


def test_image_bombs_are_refused_before_a_pixel_is_decoded(sd_server):
    bomb = png_header(13_376, 13_376)
    photo = data_uri(Image.new("RGB", (128, 128), "red"))
    for name, inputs in {
        "image": {"image": bomb},
        "mask": {"image": photo, "mask": bomb},
        "controlnet_1_image": {"controlnet_1": "canny", "controlnet_1_image": bomb},
        "ip_adapter_image": {"ip_adapter_image": bomb},
    }.items():
        error = refused(sd_server, name, **inputs)
        assert f"13376x13376 is 178917376 pixels; at most {MAX_INPUT_PIXELS}" in error
    strip = data_uri(Image.new("RGB", (1, 50_000), "white"))
    error = refused(sd_server, "ip_adapter_image", ip_adapter_image=strip)
    assert f"more than {MAX_ASPECT} times as long" in error


def test_prompts_and_counts_over_the_limits_cost_nothing(sd_server, file_server, adapter_refs):
    response = sd_server.post({**SMALL, "prompt": "x" * 20_001})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "input", "prompt"]
    before = len(file_server.requests)
    loras = [adapter_refs["sd"]["a"]] * (MAX_LORAS + 1)
    error = refused(sd_server, "lora_weights", lora_weights=loras)
    assert error == f"lora_weights: {MAX_LORAS + 1} entries; at most {MAX_LORAS} per request"
    assert len(file_server.requests) == before


def _rss(server) -> int:
    process = psutil.Process(server.process.pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def test_memory_comes_back_after_hostile_requests(sd_server, hostile_files):
    big = Image.new("RGB", (6000, 6000), "blue")  # 36 megapixels: decoded, then refused
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", quality=50)
    big_photo = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    small_mask = data_uri(Image.new("L", (64, 64)))
    hostile = [
        {"image": big_photo, "mask": small_mask},  # mask size differs: after both are decoded
        {"image": png_header(13_376, 13_376)},
        {"lora_weights": [hostile_files["a LoRA layer of the wrong shape"]]},
        {"textual_inversions": [f"<t>={hostile_files['integers']}"]},
        {"prompt": "y" * 20_000},  # within the limit; fails at 600 tokens
    ]
    for inputs in hostile:  # once, so what is loaded on first use is loaded
        sd_server.failure(**{**SMALL, **inputs})
    output_images(sd_server.predict(**SMALL))
    before = _rss(sd_server)
    for n in range(10):
        sd_server.failure(**{**SMALL, **hostile[n % len(hostile)]})
    after = _rss(sd_server)
    assert after <= before * 1.1, f"RSS {before / 2**20:.0f} MiB -> {after / 2**20:.0f} MiB"
