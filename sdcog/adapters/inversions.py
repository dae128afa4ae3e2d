"""Textual inversions, applied to the shared components for one prediction only (LoRAs: loras.py).

Everything loaded here is removed when the prediction ends, whether it succeeded, failed or was
cancelled, so the next prediction runs on the pinned weights alone. Embeddings go into copies of
the tokenizers (the shared ones are never touched) and into rows appended to the text encoders'
embedding tables, which are cut back afterwards.
"""

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from ..common import cancel
from ..common.families import Family


@dataclass(frozen=True)
class Inversion:
    reference: str
    path: Path
    token: str | None  # None: the token the file defines (diffusers' {token: embedding} format)
    input_name: str = "textual_inversions"


# Embedding-file key -> the suffix of the tokenizer and text encoder it belongs to.


def _inversion_parts(family: Family, inversion: Inversion) -> tuple[str, dict]:
    """The token and, per encoder key, what to load into it."""
    state = load_file(inversion.path)
    if family.traits.text_encoders == 2:
        if set(state) != {"clip_l", "clip_g"} or inversion.token is None:
            raise ValueError(
                f"{inversion.input_name}: {inversion.reference} must be an SDXL embedding (clip_l "
                "and clip_g tensors) given as TOKEN=REFERENCE"
            )
        return inversion.token, state
    if inversion.token is None and len(state) != 1:
        raise ValueError(
            f"{inversion.input_name}: {inversion.reference} does not name its token; write "
            "TOKEN=REFERENCE"
        )
    return inversion.token or next(iter(state)), {"": state}


def _check_shape(inversion: Inversion, embedding: Any, width: int) -> None:
    """Rows of floats as wide as the encoder's: diffusers' own errors for anything else name no
    input, and some are not errors of a kind one would catch."""
    tensors = embedding.values() if isinstance(embedding, dict) else [embedding]
    for tensor in tensors:
        if tensor.ndim not in (1, 2) or not tensor.is_floating_point() or not tensor.numel():
            raise ValueError(
                f"{inversion.input_name}: {inversion.reference} is not an embedding (it holds a "
                f"{tensor.dtype} tensor of shape {list(tensor.shape)})"
            )
        if tensor.shape[-1] != width:
            raise ValueError(
                f"{inversion.input_name}: {inversion.reference} holds embeddings "
                f"{tensor.shape[-1]} wide, and this model's text encoder takes {width}: an "
                "embedding made for another Stable Diffusion version?"
            )


@contextmanager
def applied(
    pipe: DiffusionPipeline,
    family: Family,
    inversions: list[Inversion],
    stop: threading.Event | None = None,
) -> Iterator[dict[str, Any]]:
    """The embeddings on `pipe`'s text encoders, for a with-block that gets the tokenizers to
    encode prompts with (suffix "" or "_2" -> tokenizer). `stop`, once set, ends the loading
    between two embeddings."""
    keys = family.traits.embedding_keys
    encoders = {which: getattr(pipe, f"text_encoder{which}") for which in keys.values()}
    tokenizers = {which: getattr(pipe, f"tokenizer{which}") for which in keys.values()}
    sizes = {which: e.get_input_embeddings().num_embeddings for which, e in encoders.items()}
    try:
        if inversions:
            tokenizers = {which: copy.deepcopy(t) for which, t in tokenizers.items()}
        for inversion in inversions:
            cancel.raise_if_set(stop)
            token, parts = _inversion_parts(family, inversion)
            for key, which in keys.items():
                _check_shape(inversion, parts[key], encoders[which].config.hidden_size)
                try:
                    pipe.load_textual_inversion(
                        parts[key], token=inversion.token, tokenizer=tokenizers[which],
                        text_encoder=encoders[which],
                    )  # fmt: skip
                except Exception as e:  # e.g. a token the tokenizer already has
                    raise ValueError(
                        f"{inversion.input_name}: {inversion.reference}: {str(e)[:500]}"
                    ) from None
            print(f"{inversion.input_name}: {inversion.reference} defines {token}")
        yield tokenizers
    finally:
        for which, encoder in encoders.items():
            if encoder.get_input_embeddings().num_embeddings != sizes[which]:
                encoder.resize_token_embeddings(sizes[which])  # keeps the original rows
