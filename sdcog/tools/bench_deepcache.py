"""python -m sdcog.tools.bench_deepcache WEIGHTS_DIR [SIZE]: what a DeepCache-reused UNet call costs
against a full one, per branch (the UNet work DeepCache saves, apart from everything else)."""

import sys
import time
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from ..speed import deepcache


def main() -> None:
    weights, size = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 256
    unet = UNet2DConditionModel.from_pretrained(weights / "base/unet", device_map="cpu").eval()
    unet.set_attn_processor(AttnProcessor2_0())
    sample = torch.randn(2, 4, size // 8, size // 8)  # batch 2: as with guidance
    context = torch.randn(2, 77, unet.config.cross_attention_dim)
    extra = {}
    if unet.config.addition_embed_type == "text_time":  # SDXL's micro-conditioning
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn(2, 1280),
                                       "time_ids": torch.randn(2, 6)}}  # fmt: skip
    print("| branch | reused call / full call |\n|---|---|")
    with torch.no_grad():
        unet(sample, 999, context, **extra)
        for branch in range(deepcache.branches(unet)):
            seconds = []
            with deepcache.cached({"base": unet}, 1000, branch):
                for t in (999, 998, 997, 996):  # one pipeline call: a full call, then reused
                    start = time.perf_counter()
                    unet(sample, t, context, **extra)
                    seconds.append(time.perf_counter() - start)
            print(f"| {branch} | {min(seconds[1:]) / seconds[0]:.3f} |")


if __name__ == "__main__":
    main()
