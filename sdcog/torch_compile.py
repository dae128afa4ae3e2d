"""torch.compile, opt in at setup: SDCOG_COMPILE=1 (or a torch.compile mode: reduce-overhead
adds CUDA graphs, max-autotune searches kernels longer).

The UNets are compiled and warmed up at the model's native size during setup, so the first
prediction is not the slow one. Inductor keeps its artefacts where TORCHINDUCTOR_CACHE_DIR says
(script/env: .cache/torch-compile beside predict.py): a server that restarts compiles from that
cache in a fraction of the time. Requests that patch the UNet for themselves (LoRAs, DeepCache,
IP-Adapter) run it uncompiled rather than recompiling it for every variation.
"""

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from diffusers import DiffusionPipeline


def mode(value: str | None) -> str | None:
    """SDCOG_COMPILE's value as a torch.compile mode: unset or 0 off, 1 the default mode."""
    value = (value or "").strip()
    if value in ("", "0"):
        return None
    return "default" if value == "1" else value


def compile_unets(
    base: DiffusionPipeline, refiner: DiffusionPipeline | None, size: int, chosen: str | None
) -> None:
    """Compile the base's (and refiner's) UNet in place, in mode `chosen` (None: leave them),
    and warm each up at the native size."""
    if chosen is None:
        return
    # Two steps with guidance at the native size: the shapes a default request uses. The
    # refiner (image to image) starts from latents of that size.
    warm_ups = [(base, {"width": size, "height": size})]
    if refiner is not None:
        shape = (1, refiner.vae.config.latent_channels, size // 8, size // 8)
        latents = torch.zeros(shape, device=refiner.device, dtype=refiner.dtype)
        warm_ups.append((refiner, {"image": latents, "strength": 1.0}))
    for pipe, inputs in warm_ups:
        pipe.unet.compile(mode=chosen)
        pipe("warm-up", num_inference_steps=2, output_type="latent", **inputs)
    print(f"compiled the UNets ({chosen}), warmed up at {size}x{size}")


@contextmanager
def eager_unless(plain: bool, chosen: str | None) -> Iterator[None]:
    """Compiled code (mode `chosen`; None: nothing is compiled) runs only for plain requests;
    the others run eagerly."""
    with nullcontext() if plain or chosen is None else torch.compiler.set_stance("force_eager"):
        yield
