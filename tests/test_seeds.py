import torch

from sdcog.seeds import MAX_SEED, generators, output_seeds, resolve_seed


def test_given_seed_is_kept():
    assert resolve_seed(0) == 0
    assert resolve_seed(MAX_SEED) == MAX_SEED


def test_random_seeds_span_32_bits():
    seeds = {resolve_seed(None) for _ in range(200)}
    assert len(seeds) == 200
    assert all(0 <= s <= MAX_SEED for s in seeds)
    assert max(seeds) > 65535  # not limited to 16 bits like some packages


def test_output_i_uses_seed_plus_i():
    assert output_seeds(10, 3) == [10, 11, 12]


def test_generators_are_cpu_and_match_a_lone_generator():
    batch = generators([5, 6])
    assert all(g.device.type == "cpu" for g in batch)
    alone = generators([6])[0]
    assert torch.equal(torch.randn(4, generator=batch[1]), torch.randn(4, generator=alone))
