"""Stage timings: the decoder's time comes out of the denoising stage."""

import re
from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKL

from sdcog.common import timings as timings_module
from sdcog.common.timings import STAGES, Timings


class Clock:
    """time.perf_counter as the timings see it, moved by hand: exact, whatever the machine."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_decode_time_is_split_out_of_denoising(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(timings_module, "time", SimpleNamespace(perf_counter=clock))
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4)
    decode = vae.decoder.forward

    def slow_decode(*args, **kwargs):
        clock.now += 0.2
        return decode(*args, **kwargs)

    vae.decoder.forward = slow_decode
    timings = Timings()
    with timings.denoising(vae):
        clock.now += 0.1  # "denoising"
        with torch.no_grad():
            vae.decode(torch.zeros(1, 4, 8, 8))
    assert timings.seconds["decode"] == pytest.approx(0.2)
    assert timings.seconds["denoise"] == pytest.approx(0.1)
    with timings.stage("encode"):
        clock.now += 0.05
    line = timings.line()
    assert re.fullmatch(r"timings \(ms\): " + ", ".join(rf"{s} \d+" for s in STAGES), line)
    assert "denoise 100, decode 200" in line and "encode 50" in line
