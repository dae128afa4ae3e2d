"""The fast path: what setup does to the loaded models so that each step costs less.

On by default (settings: SDCOG_FAST_PATH lists them; `none` turns all off, for comparisons; on a
CPU only fused_qkv is on by default):
- channels_last: the UNets' and VAE's convolutions in NHWC, the layout fast conv kernels want.
- fused_qkv: one matmul for self-attention's query, key and value (and one for cross-attention's
  key and value). The separate projections become views of the fused weights, so it costs no
  memory, and LoRAs still work: they are merged into the separate projections in place
  (loras.py), which writes them into the fused weights.
Each keeps images within 2/255 (mean abs difference) of the plain path; tests check it.

Beside it, on CUDA by default: the UNets compiled (torch_compile.py; SDCOG_COMPILE).
"""

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0

FAST_PATH = ("channels_last", "fused_qkv")


def choose(value: str | None = None) -> tuple[str, ...]:
    """The optimisations `value` (SDCOG_FAST_PATH's) names; unknown names are refused. None:
    all on CUDA; on a CPU only fused_qkv (channels_last made no measurable difference there,
    and converting the weights adds a quarter to setup)."""
    if value is None:
        return FAST_PATH if torch.cuda.is_available() else ("fused_qkv",)
    value = value.strip()
    if value in ("", "none"):
        return ()
    names = tuple(name.strip() for name in value.split(","))
    unknown = set(names) - set(FAST_PATH)
    if unknown:
        raise ValueError(
            f"SDCOG_FAST_PATH: unknown {sorted(unknown)}; allowed: {', '.join(FAST_PATH)} or none"
        )
    return names


def apply(pipe: DiffusionPipeline, names: tuple[str, ...]) -> None:
    """The fast path on one pipeline's UNet and VAE (after their attention processors are set)."""
    if "channels_last" in names:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if "fused_qkv" in names:
        fuse_qkv(pipe.unet)


def fuse_qkv(unet: UNet2DConditionModel) -> None:
    for module in unet.modules():
        if isinstance(module, Attention):
            _fuse(module)
    unet.set_attn_processor(FusedAttnProcessor2_0())


def _fuse(attention: Attention) -> None:
    """What diffusers' Attention.fuse_projections does, without randomly initialising the fused
    layer first (a tenth of setup); then the separate projections become views of it, so the
    weights are stored once."""
    names = ("to_k", "to_v") if attention.is_cross_attention else ("to_q", "to_k", "to_v")
    parts = [getattr(attention, name) for name in names]
    first = parts[0].weight
    fused = torch.nn.utils.skip_init(
        torch.nn.Linear, first.shape[1], sum(p.weight.shape[0] for p in parts),
        bias=attention.use_bias, device=first.device, dtype=first.dtype,
    )  # fmt: skip
    with torch.no_grad():
        fused.weight.copy_(torch.cat([p.weight for p in parts]))
        if attention.use_bias:
            fused.bias.copy_(torch.cat([p.bias for p in parts]))
    setattr(attention, "to_kv" if attention.is_cross_attention else "to_qkv", fused)
    attention.fused_projections = True
    for kind in ("weight", "bias") if attention.use_bias else ("weight",):
        chunks = getattr(fused, kind).requires_grad_(False).chunk(len(parts))
        for part, chunk in zip(parts, chunks, strict=True):
            setattr(part, kind, torch.nn.Parameter(chunk, requires_grad=False))


def is_fused(unet: UNet2DConditionModel) -> bool:
    return any(isinstance(p, FusedAttnProcessor2_0) for p in unet.attn_processors.values())
