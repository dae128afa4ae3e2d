"""Replicate's SDXL fine-tunes (`replicate_weights`): the .tar that replicate/cog-sdxl's trainer
writes, applied for one prediction the way Replicate's stability-ai/sdxl applies it.

The tar holds lora.safetensors (the UNet LoRA, its layers named as diffusers' old attention
processors named them), embeddings.pti (safetensors: per text encoder, one row per new token
<s0>, <s1>, ...) and special_params.json (what the prompt's placeholder becomes, e.g.
{"TOK": "<s0><s1>"}). Only these members are read, by name; nothing is extracted. The LoRA and
the embeddings go through the same machinery as lora_weights and textual_inversions, so they are
removed after the prediction like every adapter.
"""

import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from .adapters import Inversion
from .downloads import AdapterCache
from .filechecks import MAX_JSON_BYTES
from .loras import Lora

INPUT = "replicate_weights"
MAX_MEMBER_BYTES = 2 * 1024**3
# down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight
PROCESSOR_KEY = re.compile(
    r"(?P<layer>.+)\.processor\.(?P<projection>to_[qkv]|to_out)_lora\.(?P<half>down|up)\.weight"
)


@dataclass(frozen=True)
class FineTune:
    lora: Lora
    inversions: list[Inversion]
    token_map: dict[str, str]

    def prompt(self, text: str) -> str:
        """The prompt with each placeholder replaced by its tokens, as Replicate does."""
        for placeholder, tokens in self.token_map.items():
            text = text.replace(placeholder, tokens)
        return text


def fetch(cache: AdapterCache, reference: str, scale: float) -> FineTune:
    """The fine-tune at `reference`: downloaded once, its parts converted once, all cached."""
    archive = cache.fetch(reference, INPUT, suffix=".tar")

    def lora() -> bytes:
        return save(convert_lora(_tensors(archive, reference, "lora.safetensors"), reference))

    lora_path = cache.derived(f"{reference}#lora", lora, INPUT)
    embeddings = _tensors(archive, reference, "embeddings.pti")
    inversions = []
    for index in range(len(embeddings.get("text_encoders_0", []))):
        token = f"<s{index}>"  # the trainer's names, in its order

        def inversion(index: int = index) -> bytes:
            rows = {"clip_l": "text_encoders_0", "clip_g": "text_encoders_1"}
            return save({k: embeddings[v][index : index + 1] for k, v in rows.items()})

        path = cache.derived(f"{reference}#{token}", inversion, INPUT)
        inversions.append(Inversion(reference, path, token))
    token_map = json.loads(_member(archive, reference, "special_params.json", MAX_JSON_BYTES))
    if not isinstance(token_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in token_map.items()
    ):
        raise ValueError(f"{INPUT}: {reference}: special_params.json is not a map of strings")
    return FineTune(Lora(reference, lora_path, scale, INPUT), inversions, token_map)


def convert_lora(state: dict[str, torch.Tensor], reference: str) -> dict[str, torch.Tensor]:
    """Replicate's attention-processor LoRA as diffusers' (peft) LoRA of the UNet."""
    converted = {}
    for key, tensor in state.items():
        match = PROCESSOR_KEY.fullmatch(key)
        if match is None:
            raise ValueError(
                f"{INPUT}: {reference}: lora.safetensors holds {key}, which is not a layer of "
                "Replicate's SDXL LoRA format"
            )
        projection = "to_out.0" if match["projection"] == "to_out" else match["projection"]
        half = "lora_A" if match["half"] == "down" else "lora_B"
        converted[f"unet.{match['layer']}.{projection}.{half}.weight"] = tensor.contiguous()
    return converted


def _tensors(archive: Path, reference: str, name: str) -> dict[str, torch.Tensor]:
    """A safetensors member; anything else (a pickle) is refused before it is read as tensors."""
    try:
        return load(_member(archive, reference, name))
    except SafetensorError:
        raise ValueError(
            f"{INPUT}: {reference}: {name} is not a safetensors file (pickled weights are never "
            "loaded)"
        ) from None


def _member(archive: Path, reference: str, name: str, limit: int = MAX_MEMBER_BYTES) -> bytes:
    with tarfile.open(archive) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
        if name not in members:
            full = " (a full fine-tune, not a LoRA: only LoRA fine-tunes apply per prediction)"
            raise ValueError(
                f"{INPUT}: {reference} has no {name}"
                f"{full if 'unet.safetensors' in members else ''}; it must be the .tar of a "
                "Replicate SDXL LoRA fine-tune (lora.safetensors, embeddings.pti, "
                "special_params.json)"
            )
        if members[name].size > limit:
            raise ValueError(f"{INPUT}: {reference}: {name} is larger than {limit} bytes")
        return tar.extractfile(members[name]).read()
