"""A validated generation request: what predict() hands to the package."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Request:
    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    num_outputs: int = 1
    scheduler: str = "DPMSolverMultistep"
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    seed: int | None = None
    image: Path | None = None
    mask: Path | None = None
    prompt_strength: float = 0.8
    disable_safety_checker: bool = False
    output_format: str = "png"
    output_quality: int = 80

    def __post_init__(self) -> None:
        # Ranges and choices are the schema's job; these rules span several inputs.
        if self.mask is not None and self.image is None:
            raise ValueError("mask: a mask needs an image to inpaint; give image as well")
        if self.image is not None and int(self.num_inference_steps * self.prompt_strength) < 1:
            raise ValueError(
                "prompt_strength: with an image, prompt_strength x num_inference_steps must be "
                f"at least 1 (got {self.prompt_strength} x {self.num_inference_steps})"
            )

    @property
    def mode(self) -> str:
        if self.mask is not None:
            return "inpaint"
        return "txt2img" if self.image is None else "img2img"
