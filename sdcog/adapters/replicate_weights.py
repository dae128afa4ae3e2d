"""Replicate's SDXL fine-tunes (`replicate_weights`): the .tar that replicate/cog-sdxl's trainer
writes, applied for one prediction the way Replicate's stability-ai/sdxl applies it.

The tar holds lora.safetensors (the UNet LoRA, its layers named as diffusers' old attention
processors named them), embeddings.pti (safetensors: per text encoder, one row per new token
<s0>, <s1>, ...) and special_params.json (what the prompt's placeholder becomes, e.g.
{"TOK": "<s0><s1>"}). Only these members are read, by name, each after its size in the tar's
header has been checked (limits.MAX_TAR_MEMBER_BYTES); tensors go through a temporary file that
is removed at once. The LoRA and the embeddings go through the same machinery as lora_weights and
textual_inversions, so they are removed after the prediction like every adapter.
"""

import re
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch
from safetensors.torch import load_file, save

from ..common.limits import MAX_EMBEDDING_ROWS, MAX_TAR_MEMBER_BYTES
from ..fetch.downloads import AdapterCache
from ..fetch.references import Reference
from ..security.filechecks import check_safetensors_header, read_json_object, tar_members
from .inversions import Inversion
from .loras import Lora

INPUT = "replicate_weights"
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


def fetch(
    cache: AdapterCache, tuned: Reference, scale: float, stop: threading.Event | None = None
) -> FineTune:
    """The fine-tune `tuned` names: downloaded once, its parts converted once, all cached."""
    reference = tuned.text
    archive = _Archive(cache.fetch(tuned, suffix=".tar", stop=stop), reference)

    def lora() -> bytes:
        return save(convert_lora(archive.tensors("lora.safetensors"), reference))

    lora_path = cache.derived(f"{reference}#lora", lora, INPUT)
    embeddings = archive.tensors("embeddings.pti")
    rows = len(embeddings.get("text_encoders_0", []))
    if rows > MAX_EMBEDDING_ROWS:
        raise ValueError(
            f"{INPUT}: {reference}: embeddings.pti holds {rows} tokens; at most "
            f"{MAX_EMBEDDING_ROWS} are taken"
        )
    inversions = []
    for index in range(rows):
        token = f"<s{index}>"  # the trainer's names, in its order

        def inversion(index: int = index) -> bytes:
            names = {"clip_l": "text_encoders_0", "clip_g": "text_encoders_1"}
            return save({k: embeddings[v][index : index + 1] for k, v in names.items()})

        path = cache.derived(f"{reference}#{token}", inversion, INPUT)
        inversions.append(Inversion(reference, path, token, INPUT))
    try:
        token_map = read_json_object(archive.read("special_params.json"))
    except ValueError as e:
        raise ValueError(f"{INPUT}: {reference}: special_params.json is {e}") from None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in token_map.items()):
        raise ValueError(f"{INPUT}: {reference}: special_params.json is not a map of strings")
    return FineTune(Lora(reference, lora_path, scale, INPUT), inversions, token_map)


def convert_lora(state: dict[str, torch.Tensor], reference: str) -> dict[str, torch.Tensor]:
    """Replicate's attention-processor LoRA as diffusers' (peft) LoRA of the UNet."""
    converted = {}
    for key, tensor in state.items():
        match = PROCESSOR_KEY.fullmatch(key)
        if match is None:
            raise ValueError(
                f"{INPUT}: {reference}: lora.safetensors holds {key[:200]}, which is not a layer "
                "of Replicate's SDXL LoRA format"
            )
        projection = "to_out.0" if match["projection"] == "to_out" else match["projection"]
        half = "lora_A" if match["half"] == "down" else "lora_B"
        converted[f"unet.{match['layer']}.{projection}.{half}.weight"] = tensor.contiguous()
    return converted


class _Archive:
    """The three members of the trainer's tar, each found and size-checked from the tar's
    headers before a byte of it is read."""

    def __init__(self, path: Path, reference: str) -> None:
        self.path, self.reference = path, reference
        self.members = tar_members(path, INPUT, reference)

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """A safetensors member, its header checked (a pickle is refused) before it is read
        as tensors: through a temporary file, so it is memory-mapped, not held twice."""
        with tempfile.TemporaryDirectory() as folder:
            copy = Path(folder, "member.safetensors")
            with self._open(name) as source, open(copy, "wb") as target:
                shutil.copyfileobj(source, target)
            check_safetensors_header(copy, INPUT, f"{self.reference}: {name}")
            return load_file(copy)

    def read(self, name: str) -> bytes:
        with self._open(name) as member:
            return member.read()

    @contextmanager
    def _open(self, name: str) -> Iterator[IO[bytes]]:
        member = self.members.get(name)
        if member is None:
            full = " (a full fine-tune, not a LoRA: only LoRA fine-tunes apply per prediction)"
            raise ValueError(
                f"{INPUT}: {self.reference} has no {name}"
                f"{full if 'unet.safetensors' in self.members else ''}; it must be the .tar of a "
                "Replicate SDXL LoRA fine-tune (lora.safetensors, embeddings.pti, "
                "special_params.json)"
            )
        if member.size > MAX_TAR_MEMBER_BYTES[name]:
            raise ValueError(
                f"{INPUT}: {self.reference}: {name} is {member.size} bytes; at most "
                f"{MAX_TAR_MEMBER_BYTES[name]} are read"
            )
        with tarfile.open(self.path, "r:") as tar, tar.extractfile(member) as reader:
            yield reader
