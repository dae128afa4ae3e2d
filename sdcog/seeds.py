"""Seeds: output i of a prediction uses seed + i, drawn from a CPU generator.

CPU generators give the same noise on every device, so any output can be reproduced alone
(same seed + i, num_outputs=1) on a GPU or a CPU.
"""

import secrets

import torch

MAX_SEED = 2**32 - 1


def resolve_seed(seed: int | None) -> int:
    """The request's seed, or a random one in the unsigned 32-bit range."""
    return secrets.randbits(32) if seed is None else seed


def output_seeds(seed: int, num_outputs: int) -> list[int]:
    return [seed + i for i in range(num_outputs)]


def generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]
