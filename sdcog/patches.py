"""What a request changes on its model for its own duration, undone when it ends: its
LoRAs, its textual inversions (a Replicate fine-tune's too), the IP-Adapter, DeepCache, and
whether compiled code runs. Every adapter file is fetched before any is loaded."""

import functools
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from . import deepcache, replicate_weights, torch_compile
from . import inversions as textual_inversions
from .downloads import AdapterCache
from .filechecks import embedding_rows
from .ip_adapters import IPAdapters
from .limits import MAX_PROMPT_CHARS, MAX_REQUEST_EMBEDDING_ROWS
from .loaded_models import Model
from .loras import Lora
from .request import Request


@dataclass
class Patched:
    tokenizers: dict[str, Any]  # to encode prompts with: "" / "_2" -> tokenizer
    deepcache: dict[str, deepcache._State]  # UNet -> DeepCache's counts
    prompt: str  # the request's, a Replicate fine-tune's placeholder replaced by its tokens


class Patches:
    def __init__(
        self, cache: AdapterCache, ip_adapters: IPAdapters, compile_mode: str | None
    ) -> None:
        self.cache, self.ip_adapters, self.compile_mode = cache, ip_adapters, compile_mode

    def applied(
        self,
        stack: ExitStack,
        request: Request,
        model: Model,
        ip_adapter: str | None,
        refiner: Any,
        cancelled: threading.Event | None,
    ) -> Patched:
        """The request's patches on its model, each undone when `stack` closes."""
        text_pipe = model.pipelines.base["txt2img"]
        loras, inversions, prompt = self._fetch(request, cancelled)
        plain = not loras and ip_adapter is None and request.deepcache_interval == 1
        stack.enter_context(torch_compile.stance(plain, self.compile_mode))
        stack.enter_context(model.loras.applied(loras, cancelled))
        tokenizers = stack.enter_context(
            textual_inversions.applied(text_pipe, model.pipelines.family, inversions, cancelled)
        )
        stack.enter_context(
            self.ip_adapters.applied(ip_adapter, request.ip_adapter_scale, text_pipe.unet)
        )
        unets = {"base": text_pipe.unet} | ({"refiner": refiner.unet} if refiner else {})
        cache = stack.enter_context(
            deepcache.cached(
                unets,
                request.deepcache_interval,
                request.deepcache_branch,
                (request.deepcache_start, request.deepcache_end),
            )
        )
        return Patched(tokenizers, cache, prompt)

    def _fetch(
        self, request: Request, cancelled: threading.Event | None
    ) -> tuple[list[Lora], list[textual_inversions.Inversion], str]:
        """Every adapter file, from the cache or downloaded, before any is loaded; and the
        prompt (a Replicate fine-tune's placeholder replaced by its tokens)."""
        fetch = functools.partial(self.cache.fetch, stop=cancelled)
        refs = request.refs
        loras = [
            Lora(ref.text, fetch(ref), scale)
            for ref, scale in zip(refs.loras, request.scales, strict=True)
        ]
        inversions, rows = [], 0
        for item in refs.inversions:
            ref = item.reference.text
            path = fetch(item.reference)
            rows += embedding_rows(path, "textual_inversions", ref)
            inversions.append(textual_inversions.Inversion(ref, path, item.token))
        prompt = request.prompt
        if refs.replicate_weights:
            tuned = replicate_weights.fetch(
                self.cache, refs.replicate_weights, request.replicate_scale, cancelled
            )
            loras.append(tuned.lora)
            inversions += tuned.inversions
            rows += len(tuned.inversions)
            prompt = tuned.prompt(prompt)
            if len(prompt) > MAX_PROMPT_CHARS:
                raise ValueError(
                    f"replicate_weights: its special_params.json makes the prompt {len(prompt)} "
                    f"characters long; at most {MAX_PROMPT_CHARS}"
                )
        if rows > MAX_REQUEST_EMBEDDING_ROWS:
            raise ValueError(
                f"textual_inversions: {rows} embedding vectors in all; at most "
                f"{MAX_REQUEST_EMBEDDING_ROWS} per request"
            )
        return loras, inversions, prompt
