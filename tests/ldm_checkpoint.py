"""Write a diffusers-layout SD model as one original-format (LDM) .safetensors checkpoint, the
format civitai and the original repositories ship, so that single-file conversion can be tested
offline. This inverts diffusers' own LDM -> diffusers key mapping for the UNets and VAEs of SD
1.x, 2.x and SDXL, and writes each text encoder where the original layout keeps it: OpenAI CLIP
under its transformers names, OpenCLIP (SD 2.x, SDXL's second) under its own."""

import json
import re
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from safetensors.torch import load_file, save_file

RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
          ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
          ("conv_shortcut", "skip_connection")]  # fmt: skip
VAE_ATTENTION = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                 ("to_out.0", "proj_out")]  # fmt: skip


def _rename(rest: str, pairs: list[tuple[str, str]]) -> str:
    head, _, tail = rest.rpartition(".")
    for new, old in pairs:
        if head == new:
            return f"{old}.{tail}"
    return rest


def _unet_key(key: str, config: dict) -> str:
    per_block = config["layers_per_block"] + 1
    if key in DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]:
        return DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"][key]
    if m := re.fullmatch(r"add_embedding\.linear_([12])\.(.+)", key):  # SDXL's size conditioning
        return f"label_emb.0.{0 if m[1] == '1' else 2}.{m[2]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        b, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{b * per_block + j + 1}.0.{_rename(rest, RESNET)}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"input_blocks.{int(m[1]) * per_block + int(m[2]) + 1}.1.{m[3]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * per_block}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_rename(m[2], RESNET)}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"output_blocks.{int(m[1]) * per_block + int(m[2])}.0.{_rename(m[3], RESNET)}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"output_blocks.{int(m[1]) * per_block + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        b = int(m[1])
        slot = 2 if config["up_block_types"][b].startswith("CrossAttn") else 1
        return f"output_blocks.{b * per_block + per_block - 1}.{slot}.conv.{m[2]}"
    raise KeyError(key)


def _vae_key(key: str, config: dict) -> str:
    if key in DIFFUSERS_TO_LDM_MAPPING["vae"]:
        return DIFFUSERS_TO_LDM_MAPPING["vae"][key]
    blocks = len(config["up_block_types"])
    shortcut = [("conv_shortcut", "nin_shortcut")]
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{_rename(m[3], shortcut)}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{blocks - 1 - int(m[1])}.block.{m[2]}.{_rename(m[3], shortcut)}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_rename(m[3], shortcut)}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        return f"{m[1]}.mid.attn_1.{_rename(m[2], VAE_ATTENTION)}"
    raise KeyError(key)


OPEN_CLIP = [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
             ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj")]  # fmt: skip


def _text_model(model_dir: Path, name: str) -> dict:
    """A text encoder's tensors under transformers' `text_model.` names (5.x drops the prefix
    in CLIPTextModel's files)."""
    tensors = load_file(model_dir / name / "model.safetensors")
    return {
        key if key.startswith(("text_model.", "text_projection")) else f"text_model.{key}": value
        for key, value in tensors.items()
    }


def _open_clip(tensors: dict, prefix: str) -> dict:
    """A CLIP text encoder in OpenCLIP's layout: q, k and v in one in_proj."""
    out = {
        f"{prefix}token_embedding.weight": tensors["text_model.embeddings.token_embedding.weight"],
        f"{prefix}positional_embedding": tensors["text_model.embeddings.position_embedding.weight"],
        f"{prefix}ln_final.weight": tensors["text_model.final_layer_norm.weight"],
        f"{prefix}ln_final.bias": tensors["text_model.final_layer_norm.bias"],
    }
    width = out[f"{prefix}positional_embedding"].shape[-1]
    projection = tensors.get("text_projection.weight", torch.eye(width))
    out[f"{prefix}text_projection"] = projection.T.contiguous()
    layers = {
        int(m[1]) for k in tensors if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k))
    }
    for i in sorted(layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{part}"] = torch.cat(
                [tensors[f"{src}self_attn.{p}_proj.{part}"] for p in "qkv"]
            )
            for new, old in OPEN_CLIP:
                out[f"{dst}{old}.{part}"] = tensors[f"{src}{new}.{part}"]
    return out


def write_ldm_checkpoint(model_dir: Path, path: Path) -> None:
    """SD 1.x, 2.x (OpenCLIP text encoder) or SDXL base, from its diffusers folder."""
    checkpoint = {}
    index = json.loads((model_dir / "model_index.json").read_text())
    unet_config = json.loads((model_dir / "unet/config.json").read_text())
    for key, tensor in load_file(model_dir / "unet/diffusion_pytorch_model.safetensors").items():
        checkpoint[f"model.diffusion_model.{_unet_key(key, unet_config)}"] = tensor
    vae_config = json.loads((model_dir / "vae/config.json").read_text())
    for key, tensor in load_file(model_dir / "vae/diffusion_pytorch_model.safetensors").items():
        ldm_key = _vae_key(key, vae_config)
        if ".mid.attn_1." in ldm_key and ldm_key.endswith("weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # the original VAE attention is 1x1 convolutions
        checkpoint[f"first_stage_model.{ldm_key}"] = tensor
    text = _text_model(model_dir, "text_encoder")
    text.pop("text_model.embeddings.position_ids", None)
    if "XL" in index["_class_name"]:
        for key, tensor in text.items():
            checkpoint[f"conditioner.embedders.0.transformer.{key}"] = tensor
        second = _text_model(model_dir, "text_encoder_2")
        checkpoint.update(_open_clip(second, "conditioner.embedders.1.model."))
    elif json.loads((model_dir / "text_encoder/config.json").read_text())["hidden_act"] == "gelu":
        checkpoint.update(_open_clip(text, "cond_stage_model.model."))
    else:
        for key, tensor in text.items():
            checkpoint[f"cond_stage_model.transformer.{key}"] = tensor
    save_file({k: v.contiguous() for k, v in checkpoint.items()}, path)
