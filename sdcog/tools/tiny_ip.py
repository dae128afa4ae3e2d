"""Tiny random IP-Adapters and image encoder in h94/IP-Adapter's layout: models/image_encoder
(a CLIP vision model with projection) and each kind's file with the original key names, which
diffusers' loader converts (standard: a linear projection to 4 tokens; plus and plus_face: a
4-layer resampler with 64-wide heads over the encoder's penultimate hidden states)."""

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from ..adapters.ip_adapters import ENCODER, ENTRY
from ..common.families import PIPELINE_KINDS

VISION = 32  # the encoder's width and projection (ViT-H: 1280 and 1024)
QUERIES, RESAMPLER, DEPTH = 16, 64, 4  # as the plus adapters, narrower


def _randn(*shape: int, std: float = 0.3) -> torch.Tensor:
    return torch.randn(*shape) * std


def projection(kind: str, cross: int, vision: int = VISION, projected: int = VISION,
               width: int = RESAMPLER) -> dict[str, torch.Tensor]:  # fmt: skip
    """An adapter's image_proj part, original key names: standard maps the encoder's projected
    embedding (`projected` wide); plus and plus_face resample its hidden states (`vision`)."""
    if kind == "standard":
        return {
            "proj.weight": _randn(4 * cross, projected), "proj.bias": _randn(4 * cross),
            "norm.weight": torch.ones(cross), "norm.bias": torch.zeros(cross),
        }  # fmt: skip
    state = {
        "latents": _randn(1, QUERIES, width),
        "proj_in.weight": _randn(width, vision), "proj_in.bias": _randn(width),
        "proj_out.weight": _randn(cross, width), "proj_out.bias": _randn(cross),
        "norm_out.weight": torch.ones(cross), "norm_out.bias": torch.zeros(cross),
    }  # fmt: skip
    for i in range(DEPTH):
        for norm in (f"layers.{i}.0.norm1", f"layers.{i}.0.norm2", f"layers.{i}.1.0"):
            state |= {
                f"{norm}.weight": torch.ones(width),
                f"{norm}.bias": torch.zeros(width),
            }
        state |= {
            f"layers.{i}.0.to_q.weight": _randn(width, width),  # 64-wide heads
            f"layers.{i}.0.to_kv.weight": _randn(2 * width, width),
            f"layers.{i}.0.to_out.weight": _randn(width, width),
            f"layers.{i}.1.1.weight": _randn(4 * width, width),
            f"layers.{i}.1.3.weight": _randn(width, 4 * width),
        }
    return state


def attention(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """to_k_ip/to_v_ip for each cross-attention layer, numbered 1, 3, 5, ... as the originals."""
    state = {}
    cross = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
    for number, name in zip(range(1, 2 * len(cross), 2), cross, strict=True):
        attention = unet.get_submodule(name.removesuffix(".processor"))
        for key in ("to_k_ip", "to_v_ip"):
            state[f"{number}.{key}.weight"] = _randn(
                attention.to_k.out_features, unet.config.cross_attention_dim, std=0.5
            )
    return state


def write_ip_adapters(directory: Path, family: str, unet: UNet2DConditionModel) -> None:
    torch.manual_seed(21)
    folder = directory / ENTRY
    config = CLIPVisionConfig(
        hidden_size=VISION, intermediate_size=37, projection_dim=VISION, num_hidden_layers=2,
        num_attention_heads=4, image_size=32, patch_size=8,
    )  # fmt: skip
    CLIPVisionModelWithProjection(config).save_pretrained(folder / ENCODER, safe_serialization=True)
    cross = unet.config.cross_attention_dim
    for kind, name in PIPELINE_KINDS[family].ip_adapters.items():
        state = {f"image_proj.{k}": v for k, v in projection(kind, cross).items()}
        state |= {f"ip_adapter.{k}": v for k, v in attention(unet).items()}
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        save_file(state, folder / name)
