"""script/bench-ip-switch: what switching IP-Adapter on and off per request costs, measured in
one run on a full-size SD 1.5 UNet with full-size adapters (random weights cost what real ones
do), against one denoising step (batch 2: guidance) at 512x512 with and without the adapter."""

import time

import torch
from diffusers import UNet2DConditionModel

from ..adapters.ip_adapters import IPAdapters
from ..models.pipelines import device_and_dtype
from .tiny_ip import attention, projection

# SD 1.5's UNet; ViT-H's widths (hidden 1280, projection 1024); the plus adapters' resampler.
SD15 = {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8}
VIT_H, VIT_H_PROJECTION, PLUS_WIDTH, TOKENS = 1280, 1024, 768, 257


def _timed(run, repeats: int) -> float:
    run()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    device, dtype = device_and_dtype()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15).to(device, dtype)
    ip_adapters = IPAdapters(unet, {})
    for kind in ("standard", "plus"):
        state = {
            "image_proj": projection(kind, 768, VIT_H, VIT_H_PROJECTION, PLUS_WIDTH),
            "ip_adapter": attention(unet),
        }
        ip_adapters.add(
            kind, {k: {n: t.to(device, dtype) for n, t in v.items()} for k, v in state.items()}
        )

    def switch() -> None:
        with ip_adapters.applied("plus", 0.6):
            pass

    latents = torch.randn(2, 4, 64, 64, device=device, dtype=dtype)
    text = torch.randn(2, 77, 768, device=device, dtype=dtype)
    hidden = [torch.randn(2, 1, TOKENS, VIT_H, device=device, dtype=dtype)]

    @torch.no_grad()
    def step(image_embeds: list | None = None) -> None:
        added = {"image_embeds": image_embeds} if image_embeds else None
        unet(latents, 500, encoder_hidden_states=text, added_cond_kwargs=added)

    def step_with_plus() -> None:
        with ip_adapters.applied("plus", 0.6):
            step(hidden)

    repeats = 10 if device == "cuda" else 2
    switch_s = _timed(switch, 50)
    plain_s = _timed(step, repeats)
    plus_s = _timed(step_with_plus, repeats)
    print(f"device {device}, {dtype}; SD 1.5 UNet, 512x512, batch 2")
    print(f"switch plus on and off:   {switch_s * 1000:8.2f} ms")
    print(f"one step without adapter: {plain_s * 1000:8.1f} ms")
    print(f"one step with plus:       {plus_s * 1000:8.1f} ms")
    print(f"switch / step:            {switch_s / plain_s:8.4f}")
    print(f"step with plus / without: {plus_s / plain_s:8.3f}")
