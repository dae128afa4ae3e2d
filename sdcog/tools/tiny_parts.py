"""The parts every tiny model is made of (tiny_weights.py's pinned models, tiny_models.py's
other models of each family, full_size_weights.py's schedulers): one UNet, VAE, text encoder
and scheduler shape each, shrunk from the real ones."""

from diffusers import AutoencoderKL, EulerDiscreteScheduler, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig

from .clip_tokenizer import TOKEN_IDS

SEED = 0
HIDDEN = 32  # text encoder width = UNet cross-attention width
TEXT_LAYERS = 5  # enough hidden states for every clip_skip value
NATIVE_SIZE = 512  # like SD 1.5: unet.sample_size * 8
TIME_EMBED = 8  # SDXL's time-id embedding width, shrunk


def tiny_unet(sample_size: int, cross_attention_dim: int = HIDDEN, **sdxl) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        # Attention only at the lowest resolution keeps 2048x2048 cheap on a CPU.
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
        **sdxl,
    )


def tiny_vae(**config) -> AutoencoderKL:
    # Four blocks keep the real 8x downsampling; 8 channels keep it cheap at 2048 px.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=NATIVE_SIZE,
        **config,
    )


def tiny_text_config(**extra) -> CLIPTextConfig:
    """The tiny text encoder; `extra` adds to or overrides its settings."""
    config = {
        **TOKEN_IDS, "hidden_size": HIDDEN, "intermediate_size": 37,
        "num_hidden_layers": TEXT_LAYERS, "num_attention_heads": 4, "max_position_embeddings": 77,
    }  # fmt: skip
    return CLIPTextConfig(**(config | extra))


def sd_scheduler() -> PNDMScheduler:
    # SD 1.5's shipped scheduler config.
    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )


def sdxl_scheduler() -> EulerDiscreteScheduler:
    # SDXL 1.0's shipped scheduler config.
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        interpolation_type="linear",
    )
