"""Prompt encoding with compel: weighting syntax, prompts longer than 77 tokens, clip skip.

compel parses `word+++`, `(words)1.3`, `.blend()` and `.and()` and encodes long prompts in
77-token chunks; "a1111" reads AUTOMATIC1111's syntax into the same structures (a1111.py). With
prompt_weighting "none" the text goes to the same encoder unparsed, so a prompt without syntax
gives the same embeddings either way and long prompts are chunked in all three.
"""

import unicodedata
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from compel import Compel, ReturnedEmbeddingsType
from compel.diffusers_textual_inversion_manager import DiffusersTextualInversionManager
from compel.prompt_parser import Conjunction, FlattenedPrompt, Fragment
from diffusers import DiffusionPipeline

from ..common.families import Family
from . import a1111

MAX_CHUNKS = 8  # 8 x 75 tokens: beyond that a prompt is refused, never cut


class _Encoder:
    """A text encoder as compel calls it. `skip` drops that many more layers from the hidden
    states (clip skip beyond compel's 'penultimate'; pooled outputs still come from the full
    encoder, as in diffusers), and the pooled output of every call is kept, so SDXL's pooled
    embedding comes from the pass that encoded the prompt rather than from a pass of its own."""

    def __init__(self, encoder: torch.nn.Module, skip: int) -> None:
        self.encoder, self.skip = encoder, skip
        self.pooled: list[torch.Tensor] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.skip:
            kwargs["output_hidden_states"] = True
        output = self.encoder(*args, **kwargs)
        if self.skip:
            output.hidden_states = output.hidden_states[: len(output.hidden_states) - self.skip]
        self.pooled.append(getattr(output, "text_embeds", None))
        return output

    def __getattr__(self, name: str) -> Any:
        if name == "text_model" and not hasattr(self.encoder, "text_model"):
            # transformers 5 flattened CLIPTextModel; compel still reaches for .text_model to
            # apply the final layer norm to a penultimate layer.
            return self.encoder
        return getattr(self.encoder, name)


def _compel(pipe: DiffusionPipeline, tokenizers: dict[str, Any], which: str,
            kind: ReturnedEmbeddingsType, skip: int) -> Compel:  # fmt: skip
    """compel over text encoder `which` ("" or "_2"); skip: layers to drop beyond what `kind`
    takes."""
    encoder = getattr(pipe, f"text_encoder{which}")
    # compel expands multi-vector embedding tokens through the (first) tokenizer.
    shim = SimpleNamespace(tokenizer=tokenizers[""], maybe_convert_prompt=pipe.maybe_convert_prompt)
    inversions = DiffusersTextualInversionManager(shim)
    return Compel(
        tokenizer=tokenizers[which],
        text_encoder=_Encoder(encoder, skip),
        textual_inversion_manager=inversions,
        returned_embeddings_type=kind,
        truncate_long_prompts=False,
        device=encoder.device,
    )


def clean(text: str) -> str:
    """Control characters and line, page and tab breaks as plain spaces: CLIP's tokenizer
    collapses whitespace anyway, and compel's parser stops at some of them (\\v, \\f)."""
    return "".join(" " if c.isspace() or unicodedata.category(c) == "Cc" else c for c in text)


# Every weighting construct of compel's syntax needs one of these characters.
SYNTAX = frozenset('()[]+-"\\')


def _plain(text: str) -> bool:
    """Text that compel's parser gives back unchanged at weight 1: no syntax, and already in
    the parser's spacing (single spaces, none at the ends, one after each comma). Such text skips
    the parser, which costs 12 ms a prompt on a CPU core."""
    words = text.split(" ")
    return (
        not SYNTAX.intersection(text)
        and all(words)
        and all(rest.startswith(" ") for rest in text.split(",")[1:])
    )


def _conjunction(text: str, weighting: str, input_name: str) -> Conjunction:
    """The parsed prompt; text compel cannot parse is encoded as written, and the log says so."""
    if weighting == "a1111":
        return a1111.conjunction(text)
    if weighting == "compel" and not _plain(text):
        try:
            conjunction = Compel.parse_prompt_string(text)
        except Exception as e:  # pyparsing's errors, and whatever else a parser bug raises
            print(f"{input_name}: weighting syntax not understood ({e}); encoded as plain text")
        else:
            if conjunction.prompts or not text.strip():
                return conjunction
            print(f"{input_name}: weighting syntax leaves nothing to encode; encoded as plain text")
    return Conjunction([FlattenedPrompt([Fragment(text)])])


def _encode_pair(
    compel: Compel, conjunctions: list[Conjunction]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Embeddings padded to one length, and pooled embeddings of each text's first 77 tokens
    (what diffusers pools; weighting applies to the embeddings only)."""
    encoder, embeds, pooled = compel.conditioning_provider.text_encoder, [], []
    for conjunction in conjunctions:
        encoder.pooled.clear()
        embeds.append(compel.build_conditioning_tensor_for_conjunction(conjunction)[0])
        pooled.append(encoder.pooled[0])  # compel encodes the first chunk first
    return compel.pad_conditioning_tensors_to_same_length(embeds), pooled


def _pad_to(compel: Compel, tensors: list[torch.Tensor], length: int) -> list[torch.Tensor]:
    if all(t.shape[1] == length for t in tensors):
        return tensors
    empty = compel.conditioning_provider.empty_z
    return [torch.cat([t] + [empty] * ((length - t.shape[1]) // empty.shape[1]), dim=1)
            for t in tensors]  # fmt: skip


@dataclass
class Embeddings:
    """Pipeline keyword arguments for the base model and, for SDXL, the refiner."""

    base: dict[str, torch.Tensor]
    refiner: dict[str, torch.Tensor]


def check_length(pipe: DiffusionPipeline, text: str, input_name: str) -> None:
    chunk = pipe.tokenizer.model_max_length - 2
    tokens = len(pipe.tokenizer(text, truncation=False).input_ids) - 2
    if tokens > MAX_CHUNKS * chunk:
        raise ValueError(
            f"{input_name}: {tokens} tokens is more than the {MAX_CHUNKS * chunk} that can be "
            "encoded; shorten it"
        )


def _zero_negative(embeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    negatives = {k: torch.zeros_like(v) for k, v in embeds.items() if k.startswith("negative_")}
    return {**embeds, **negatives}


def encode(pipe: DiffusionPipeline, family: Family, prompt: str, negative_prompt: str,
           weighting: str, clip_skip: int, tokenizers: dict[str, Any] | None = None,
           refiner_zeros: bool = False) -> Embeddings:  # fmt: skip
    """Embeddings for a prompt and negative prompt; clip_skip as diffusers means it.
    `tokenizers` ("" / "_2" -> tokenizer) replace the pipeline's (textual inversions).

    An SDXL model whose config sets force_zeros_for_empty_prompt (the base's does, the
    refiner's does not; refiner_zeros gives the refiner's) is conditioned on zeros for an empty
    negative prompt, as its authors sample and diffusers' pipe(prompt) does."""
    tokenizers = tokenizers or {"": pipe.tokenizer, "_2": getattr(pipe, "tokenizer_2", None)}
    texts = {"prompt": clean(prompt), "negative_prompt": clean(negative_prompt)}
    for name, text in texts.items():
        check_length(pipe, text, name)
    conjunctions = [_conjunction(text, weighting, name) for name, text in texts.items()]
    if family.traits.text_encoders == 1:
        if clip_skip:  # layer -(clip_skip + 1), through the final layer norm
            kind = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NORMALIZED
            compel = _compel(pipe, tokenizers, "", kind, skip=clip_skip - 1)
        else:
            kind = ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED
            compel = _compel(pipe, tokenizers, "", kind, skip=0)
        (positive, negative), _ = _encode_pair(compel, conjunctions)
        embeds = {"prompt_embeds": positive, "negative_prompt_embeds": negative}
        return Embeddings(base=embeds, refiner={})

    # SDXL: both encoders' penultimate layers side by side; pooled output of the second.
    kind = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
    compel_1 = _compel(pipe, tokenizers, "", kind, skip=clip_skip)
    compel_2 = _compel(pipe, tokenizers, "_2", kind, skip=clip_skip)
    pair_1, _ = _encode_pair(compel_1, conjunctions)
    pair_2, pooled = _encode_pair(compel_2, conjunctions)
    length = max(pair_1[0].shape[1], pair_2[0].shape[1])
    pair_1, pair_2 = _pad_to(compel_1, pair_1, length), _pad_to(compel_2, pair_2, length)
    # The refiner conditions on the second encoder alone; the base on both.
    refiner = {
        "prompt_embeds": pair_2[0],
        "negative_prompt_embeds": pair_2[1],
        "pooled_prompt_embeds": pooled[0],
        "negative_pooled_prompt_embeds": pooled[1],
    }
    base = {
        **refiner,
        "prompt_embeds": torch.cat([pair_1[0], pair_2[0]], dim=-1),
        "negative_prompt_embeds": torch.cat([pair_1[1], pair_2[1]], dim=-1),
    }
    if not texts["negative_prompt"].strip():
        if pipe.config.force_zeros_for_empty_prompt:
            base = _zero_negative(base)
        if refiner_zeros:
            refiner = _zero_negative(refiner)
    return Embeddings(base=base, refiner=refiner)
