"""Tiny LoRA and textual-inversion files for the tiny models, made the way trainers make them
(peft adapters on the UNet and text encoders), in diffusers', Kohya's and SDXL's formats."""

import json
import tarfile
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _lora_layers(model: torch.nn.Module, targets: list[str], seed: int) -> dict:
    torch.manual_seed(seed)
    # Random B as well as A (not peft's zero init), so that the LoRA changes the output.
    model.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False)
    )
    with torch.no_grad():  # large enough to matter on random weights
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(20)
    return get_peft_model_state_dict(model)


def write_lora(model_dir: Path, family: str, path: Path, seed: int, kohya: bool = False) -> Path:
    """A LoRA for the tiny base model at model_dir/base (UNet and text encoder(s))."""
    base = model_dir / "base"
    unet = _lora_layers(UNet2DConditionModel.from_pretrained(base / "unet"), UNET_TARGETS, seed)
    text = _lora_layers(
        CLIPTextModel.from_pretrained(base / "text_encoder"), TEXT_TARGETS, seed + 1
    )
    if kohya:  # Kohya's format (AUTOMATIC1111, ComfyUI, civitai), its key names exactly
        state = convert_state_dict_to_kohya(
            {f"unet.{k}": v for k, v in unet.items()}
            | {f"text_encoder.{k}": v for k, v in text.items()}
        )
        te = "lora_te1_text_model_" if family == "sdxl" else "lora_te_text_model_"
        save_file({k.replace("lora_te1_", te): v for k, v in state.items()}, path)
        return path
    layers = {
        "unet_lora_layers": convert_state_dict_to_diffusers(unet),
        "text_encoder_lora_layers": convert_state_dict_to_diffusers(text),
    }
    pipeline = StableDiffusionPipeline
    if family == "sdxl":
        encoder_2 = CLIPTextModelWithProjection.from_pretrained(base / "text_encoder_2")
        text_2 = _lora_layers(encoder_2, TEXT_TARGETS, seed + 2)
        layers["text_encoder_2_lora_layers"] = convert_state_dict_to_diffusers(text_2)
        pipeline = StableDiffusionXLPipeline
    pipeline.save_lora_weights(
        path.parent, weight_name=path.name, safe_serialization=True, **layers
    )
    return path


def write_embedding(family: str, path: Path, token: str, seed: int, width: int = 32) -> Path:
    """A textual-inversion embedding: {token: vectors} for SD 1.x, clip_l/clip_g for SDXL."""
    torch.manual_seed(seed)
    if family == "sdxl":
        state = {"clip_l": torch.randn(2, width) * 3, "clip_g": torch.randn(2, width) * 3}
    else:
        state = {token: torch.randn(2, width) * 3}  # two vectors: a multi-vector token
    save_file(state, path)
    return path


def write_replicate_tar(model_dir: Path, folder: Path, seed: int) -> dict[str, Path]:
    """What replicate/cog-sdxl's trainer writes for a LoRA fine-tune, as the .tar Replicate
    serves: lora.safetensors (diffusers' old attention-processor names), embeddings.pti (two
    new tokens per text encoder) and special_params.json. And, made from the same tensors by
    this test code, the same fine-tune as files lora_weights and textual_inversions take."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(model_dir / "base" / "unet")
    processor_format, diffusers_format = {}, {}
    for processor in unet.attn_processors:  # ...attn1.processor
        attention = unet.get_submodule(processor.removesuffix(".processor"))
        for short, layer in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"),
                             ("to_out", "to_out.0")):  # fmt: skip
            linear = attention.get_submodule(layer)
            down = torch.randn(4, linear.in_features) * 0.5
            up = torch.randn(linear.out_features, 4) * 0.5
            processor_format[f"{processor}.{short}_lora.down.weight"] = down
            processor_format[f"{processor}.{short}_lora.up.weight"] = up
            name = processor.removesuffix(".processor")
            diffusers_format[f"unet.{name}.{layer}.lora_A.weight"] = down
            diffusers_format[f"unet.{name}.{layer}.lora_B.weight"] = up
    widths = [
        CLIPTextModel.from_pretrained(model_dir / "base" / "text_encoder").config.hidden_size,
        CLIPTextModelWithProjection.from_pretrained(
            model_dir / "base" / "text_encoder_2"
        ).config.hidden_size,
    ]
    rows = [torch.randn(2, width) * 3 for width in widths]
    members = folder / "members"
    members.mkdir(exist_ok=True)
    save_file(processor_format, members / "lora.safetensors")
    save_file({f"text_encoders_{i}": r for i, r in enumerate(rows)}, members / "embeddings.pti")
    (members / "special_params.json").write_text(json.dumps({"TOK": "<s0><s1>"}))
    files = {"tar": folder / "trained_model.tar"}
    with tarfile.open(files["tar"], "w") as tar:
        for path in sorted(members.iterdir()):
            tar.add(path, arcname=path.name)
    files["lora"] = folder / "lora_diffusers.safetensors"
    save_file(diffusers_format, files["lora"])
    for index in range(2):
        files[f"<s{index}>"] = folder / f"s{index}.safetensors"
        save_file({"clip_l": rows[0][index : index + 1], "clip_g": rows[1][index : index + 1]},
                  files[f"<s{index}>"])  # fmt: skip
    return files
