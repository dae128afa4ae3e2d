"""Seeds: output i of a prediction uses seed + i, drawn from a CPU generator by default.

CPU generators give the same noise on every device, so any output can be reproduced alone
(same seed + i, num_outputs=1) on a GPU or a CPU. seed_device="cuda" draws from a CUDA generator
instead, as Replicate's stability-ai packages and most diffusers code do
(`torch.Generator("cuda").manual_seed(seed)`): the same seed then gives the image those give.
CUDA's generator exists only on a CUDA device, so a server without one refuses it.
"""

import secrets

import torch

MAX_SEED = 2**32 - 1


RANDOM = -1  # AUTOMATIC1111's and many clients' "a random seed"


def resolve_seed(seed: int | None) -> int:
    """The request's seed, or a random one in the unsigned 32-bit range (none given, or -1)."""
    return secrets.randbits(32) if seed is None or seed == RANDOM else seed


def output_seeds(seed: int, num_outputs: int) -> list[int]:
    return [seed + i for i in range(num_outputs)]


SEED_DEVICES = ("cpu", "cuda")


def check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "seed_device: cuda draws the noise a CUDA generator gives, and this server has no "
            "CUDA device; use cpu (the default: the same noise on every device)"
        )


def generators(seeds: list[int], device: str = "cpu") -> list[torch.Generator]:
    """One generator per output, seeded with its seed, on `device` (cpu or cuda)."""
    return [torch.Generator(device).manual_seed(s) for s in seeds]
