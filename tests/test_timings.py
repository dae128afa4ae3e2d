"""Stage timings: the decoder's time comes out of the denoising stage."""

import re
import time

import torch
from diffusers import AutoencoderKL

from sdcog.timings import STAGES, Timings


def test_decode_time_is_split_out_of_denoising():
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4)
    slow = vae.decoder.forward
    vae.decoder.forward = lambda *a, **k: (time.sleep(0.2), slow(*a, **k))[1]
    timings = Timings()
    with timings.denoising(vae):
        time.sleep(0.1)  # "denoising"
        with torch.no_grad():
            vae.decode(torch.zeros(1, 4, 8, 8))
    assert 0.2 <= timings.seconds["decode"] < 0.3
    assert 0.1 <= timings.seconds["denoise"] < 0.2
    with timings.stage("encode"):
        time.sleep(0.05)
    line = timings.line()
    assert re.fullmatch(r"timings \(ms\): " + ", ".join(rf"{s} \d+" for s in STAGES), line)
    assert "decode 2" in line and "encode 5" in line
