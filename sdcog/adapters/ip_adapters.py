"""IP-Adapter (an image as a prompt): loaded once, switched on per request in memory.

Pinned as [ip_adapter] (h94/IP-Adapter): the ViT-H image encoder, which SD 1.5's adapters and
SDXL's `_vit-h` ones share, and one file per kind. In setup each pinned kind goes through
diffusers' own loader into the UNet once; its attention processors (holding the adapter's
to_k_ip/to_v_ip weights) and its image projection are kept, and the UNet gets its own back. A
request with ip_adapter_image swaps the kept ones in and out again afterwards (references only,
nothing is copied or read from disk); a request without it runs on the UNet exactly as a build
without IP-Adapter pins has it. (diffusers' unload_ip_adapter() would drop the image encoder, so
loading per request would re-read it every time.)
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.loaders import IPAdapterMixin
from safetensors import safe_open
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from ..common.families import Family

ENTRY = "ip_adapter"
ENCODER = "models/image_encoder"
# The UNet config keys that decide its attention layers (and so the adapter's processors).
LAYOUT = (
    "down_block_types", "up_block_types", "mid_block_type", "layers_per_block",
    "transformer_layers_per_block", "only_cross_attention",
)  # fmt: skip


@dataclass(frozen=True)
class _Adapter:
    processors: dict[str, Any]
    projection: torch.nn.Module


def read_adapter(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """An adapter file split into diffusers' {"image_proj": ..., "ip_adapter": ...}."""
    state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    with safe_open(path, framework="pt") as f:
        for key in f.keys():
            part, _, name = key.partition(".")
            state[part][name] = f.get_tensor(key)
    return state


class IPAdapters:
    def __init__(self, unet: UNet2DConditionModel, adapters: dict[str, _Adapter]) -> None:
        self.unet = unet
        self.adapters = adapters
        self.encoder: tuple[Any, Any] | None = None  # the image encoder and its processor

    @classmethod
    def load(
        cls, weights_dir: Path, family: Family, pipes: dict[str, DiffusionPipeline]
    ) -> "IPAdapters":
        """Every pinned kind, loaded into (and taken out of) the pipelines' shared UNet; the image
        encoder registered on each pipeline. Without the pin: no kinds."""
        unet = pipes["txt2img"].unet
        folder = weights_dir / ENTRY
        if not (folder / ENCODER / "config.json").exists():
            return cls(unet, {})
        encoder = CLIPVisionModelWithProjection.from_pretrained(
            folder / ENCODER, dtype=unet.dtype, device_map=unet.device
        )
        size = encoder.config.image_size
        extractor = CLIPImageProcessor(size=size, crop_size=size)
        ip_adapters = cls(unet, {})
        ip_adapters.encoder = (encoder, extractor)
        ip_adapters.share_encoder(pipes)
        for kind, name in family.traits.ip_adapters.items():
            if (folder / name).exists():
                ip_adapters.add(kind, read_adapter(folder / name))
        print(f"IP-Adapters: {', '.join(ip_adapters.adapters) or 'none'}")
        return ip_adapters

    def share_encoder(self, pipes: dict[str, DiffusionPipeline]) -> None:
        """The image encoder on the pipelines of a model (the build's, or a request's)."""
        if self.encoder is not None:
            encoder, extractor = self.encoder
            for pipe in pipes.values():
                pipe.register_modules(image_encoder=encoder, feature_extractor=extractor)

    def add(self, kind: str, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """One adapter through diffusers' loader into the UNet, kept, and taken out again."""
        own = _own(self.unet)
        self.unet._load_ip_adapter_weights([state])
        processors = dict(self.unet.attn_processors)
        self.adapters[kind] = _Adapter(processors, self.unet.encoder_hid_proj)
        _restore(self.unet, own)

    def check(self, kind: str) -> None:
        """The kind is pinned in this build."""
        if not self.adapters:
            raise ValueError(
                f"ip_adapter_image: this build has no IP-Adapter (pin [{ENTRY}] in "
                "weights/pins.toml); leave ip_adapter_image out"
            )
        if kind not in self.adapters:
            pinned = ", ".join(self.adapters) or "none"
            raise ValueError(
                f"ip_adapter: {kind} is not pinned in this build (pinned: {pinned}; pin "
                f"[{ENTRY}] with its file in weights/pins.toml)"
            )

    def check_fits(self, unet_config: Any) -> None:
        """A request's model of another family, or of another architecture (other attention
        layers), cannot take the build's adapters; from its UNet's config, before it loads."""
        key, own = "cross_attention_dim", self.unet.config
        same_layers = all(unet_config[k] == own[k] for k in LAYOUT)
        if unet_config[key] != own[key] or not same_layers:
            raise ValueError(
                "ip_adapter_image: the build's IP-Adapters are for its own model's family "
                f"({key} {own[key]}); base_model's UNet differs ({key} "
                f"{unet_config[key]}{'' if same_layers else ', other attention layers'}); leave "
                "ip_adapter_image out"
            )

    @contextmanager
    def applied(
        self, kind: str | None, scale: float, unet: UNet2DConditionModel | None = None
    ) -> Iterator[None]:
        """Kind `kind` at `scale` in `unet` (default: the build's) for a with-block; None:
        nothing changes. The adapter's processors hold its weights and no reference to the UNet
        they were made in, so one set serves every UNet of the same architecture."""
        if kind is None:
            yield
            return
        unet = unet or self.unet
        print(f"ip_adapter: {kind} at scale {scale}")
        adapter, own = self.adapters[kind], _own(unet)
        # The projection first: a resampler's own attention layers count among the processors.
        unet.encoder_hid_proj = adapter.projection
        unet.config.encoder_hid_dim_type = "ip_image_proj"
        unet.set_attn_processor(dict(adapter.processors))  # it empties the dict it gets
        # diffusers' own setter; it needs only the UNet of the pipeline it belongs to.
        IPAdapterMixin.set_ip_adapter_scale(SimpleNamespace(unet=unet), scale)
        try:
            yield
        finally:
            _restore(unet, own)


def _own(unet: UNet2DConditionModel) -> tuple[Any, ...]:
    """What switching an adapter on changes in a UNet, to be put back."""
    return dict(unet.attn_processors), unet.encoder_hid_proj, unet.config.encoder_hid_dim_type


def _restore(unet: UNet2DConditionModel, own: tuple[Any, ...]) -> None:
    processors, projection, hid_dim_type = own
    unet.encoder_hid_proj = projection
    unet.config.encoder_hid_dim_type = hid_dim_type
    unet.set_attn_processor(dict(processors))
