"""Random upscalers in Real-ESRGAN's layout (basicsr's RRDBNet keys, as RealESRGAN_x4plus's
state dict has them), which spandrel must read as the same architecture: tiny for tests, full
size (64 features, 23 blocks) for benchmarks. The face detector has no random stand-in: its real
weights are 600 KB (tests fetch them once, as download-weights does)."""

from pathlib import Path

import torch
from safetensors.torch import save_file

from ..models.upscalers import ENTRY

FILE = "RealESRGAN_x4plus.safetensors"  # the pinned file's name
GROWTH = 32  # channels each dense layer adds; spandrel reads ESRGAN's as 32


def rrdb_state_dict(features: int, blocks: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A 4x RRDBNet: conv_first, `blocks` residual-in-residual dense blocks of three 5-layer
    dense blocks, conv_body, two nearest-neighbour 2x upsamplings, conv_hr, conv_last."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}

    def conv(name: str, out: int, into: int) -> None:
        scale = (2 / (9 * into)) ** 0.5  # He's initialisation: the signal neither dies nor grows
        tensors[f"{name}.weight"] = torch.randn(out, into, 3, 3, generator=generator) * scale
        tensors[f"{name}.bias"] = torch.zeros(out)

    conv("conv_first", features, 3)
    for block in range(blocks):
        for dense in (1, 2, 3):
            for layer in range(1, 6):
                out = features if layer == 5 else GROWTH
                conv(f"body.{block}.rdb{dense}.conv{layer}", out, features + (layer - 1) * GROWTH)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        conv(name, features, features)
    conv("conv_last", 3, features)
    tensors["conv_last.bias"] = torch.full((3,), 0.5)  # mid-grey plus the input's traces
    return tensors


def write_upscaler(directory: Path, features: int = 8, blocks: int = 1) -> None:
    """weights/upscaler/ as [upscaler] pins it."""
    (directory / ENTRY).mkdir(parents=True, exist_ok=True)
    save_file(rrdb_state_dict(features, blocks), directory / ENTRY / FILE)
