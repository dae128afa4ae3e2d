"""What a request changes on its model for its own duration, undone when it ends, through one
patch interface (InvokeAI's extensions and ComfyUI's model patcher are the models).

A patch is a function `patch(patching, stack)`: it makes its change to the request's model and
registers the undoing on `stack`, which closes when the request's denoising ends; it reads the
request, its model and the files fetched for it from `patching`, and leaves there what the later
stages use (the tokenizers to encode prompts with, the prompt, DeepCache's counts, step hooks).
PATCHES run in order and are undone in reverse: a requested VAE, whether compiled code runs, the
LoRAs, the textual inversions (a Replicate fine-tune's too), the IP-Adapter, DeepCache. A new
adapter is a function here and an entry in PATCHES. Every adapter file is fetched before any
patch is applied."""

import functools
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from diffusers import AutoencoderKL

from .adapters import inversions as textual_inversions
from .adapters import replicate_weights
from .adapters.ip_adapters import IPAdapters
from .adapters.loras import Lora
from .common.limits import MAX_PROMPT_CHARS, MAX_REQUEST_EMBEDDING_ROWS
from .denoise.steps import StepHooks
from .fetch.downloads import AdapterCache
from .models.loaded_models import Model, vae_swapped
from .request.request import Request
from .security.filechecks import embedding_rows
from .speed import deepcache, torch_compile

States = dict[str, deepcache._State]  # UNet name -> DeepCache's counts


@dataclass
class Patching:
    """One request's patches: what they read, and what they leave for the later stages."""

    request: Request
    model: Model
    vae: AutoencoderKL | None  # the request's vae, or None for the model's own
    ip_adapters: IPAdapters
    compile_mode: str | None
    hooks: StepHooks
    cancelled: threading.Event | None
    # Fetched before any patch is applied
    loras: list[Lora] = field(default_factory=list)
    inversions: list[textual_inversions.Inversion] = field(default_factory=list)
    prompt: str = ""  # the request's, a Replicate fine-tune's placeholder replaced by its tokens
    # Left by the patches
    tokenizers: dict[str, Any] = field(default_factory=dict)  # "" / "_2" -> tokenizer
    deepcache: States = field(default_factory=dict)


Patch = Callable[[Patching, ExitStack], None]


def vae(p: Patching, stack: ExitStack) -> None:
    stack.enter_context(vae_swapped(p.model, p.vae))


def compiled_code(p: Patching, stack: ExitStack) -> None:
    """Compiled UNets for plain requests; eager ones for what compiled code was not made for."""
    request = p.request
    plain = not p.loras and not request.ip_adapter_image and request.deepcache_interval == 1
    stack.enter_context(torch_compile.stance(plain, p.compile_mode))


def loras(p: Patching, stack: ExitStack) -> None:
    stack.enter_context(p.model.loras.applied(p.loras, p.cancelled))


def embeddings(p: Patching, stack: ExitStack) -> None:
    text_pipe = p.model.pipelines.base["txt2img"]
    p.tokenizers = stack.enter_context(
        textual_inversions.applied(text_pipe, p.model.pipelines.family, p.inversions, p.cancelled)
    )


def ip_adapter(p: Patching, stack: ExitStack) -> None:
    request = p.request
    kind = request.ip_adapter if request.ip_adapter_image else None
    unet = p.model.pipelines.base["txt2img"].unet
    stack.enter_context(p.ip_adapters.applied(kind, request.ip_adapter_scale, unet))


def deep_cache(p: Patching, stack: ExitStack) -> None:
    """DeepCache on the UNets the request runs (the refiner's too), its window told each pass's
    length by a step hook."""
    request, pipelines = p.request, p.model.pipelines
    unets = {"base": pipelines.base["txt2img"].unet}
    if request.refine != "no_refiner":
        unets["refiner"] = pipelines.refiner["txt2img"].unet
    window = (request.deepcache_start, request.deepcache_end)
    p.deepcache = stack.enter_context(
        deepcache.cached(unets, request.deepcache_interval, request.deepcache_branch, window)
    )
    if p.deepcache:
        p.hooks.add(deepcache.step_end(p.deepcache))


PATCHES: tuple[Patch, ...] = (vae, compiled_code, loras, embeddings, ip_adapter, deep_cache)


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
        vae: AutoencoderKL | None,
        hooks: StepHooks,
        cancelled: threading.Event | None,
    ) -> Patching:
        """The request's patches on its model, each undone when `stack` closes."""
        patching = Patching(
            request, model, vae, self.ip_adapters, self.compile_mode, hooks, cancelled
        )
        self._fetch(patching)
        for patch in PATCHES:
            patch(patching, stack)
        return patching

    def _fetch(self, p: Patching) -> None:
        """Every adapter file, from the cache or downloaded, before any is loaded; and the
        prompt (a Replicate fine-tune's placeholder replaced by its tokens)."""
        fetch = functools.partial(self.cache.fetch, stop=p.cancelled)
        request, refs = p.request, p.request.refs
        p.loras = [
            Lora(ref.text, fetch(ref), scale)
            for ref, scale in zip(refs.loras, request.scales, strict=True)
        ]
        rows = 0
        for item in refs.inversions:
            ref = item.reference.text
            path = fetch(item.reference)
            rows += embedding_rows(path, "textual_inversions", ref)
            p.inversions.append(textual_inversions.Inversion(ref, path, item.token))
        p.prompt = request.prompt
        if refs.replicate_weights:
            tuned = replicate_weights.fetch(
                self.cache, refs.replicate_weights, request.replicate_scale, p.cancelled
            )
            p.loras.append(tuned.lora)
            p.inversions += tuned.inversions
            rows += len(tuned.inversions)
            p.prompt = tuned.prompt(p.prompt)
            if len(p.prompt) > MAX_PROMPT_CHARS:
                raise ValueError(
                    f"replicate_weights: its special_params.json makes the prompt "
                    f"{len(p.prompt)} characters long; at most {MAX_PROMPT_CHARS}"
                )
        if rows > MAX_REQUEST_EMBEDDING_ROWS:
            raise ValueError(
                f"textual_inversions: {rows} embedding vectors in all; at most "
                f"{MAX_REQUEST_EMBEDDING_ROWS} per request"
            )
