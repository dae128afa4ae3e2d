"""Stable Diffusion behind Cog's predictions API: the logic that predict.py hands requests to.

Importing it silences what the libraries say at every start that no user can act on (each
filter matches that message only; anything else they say still shows).
"""

import logging
import warnings


class _Drop(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


# transformers: its image processors fall back to PIL without torchvision. This package never
# installs torchvision (it does not load against the pinned torch); the PIL ones are used.
logging.getLogger("transformers.utils.import_utils").addFilter(_Drop("requires torchvision"))
# transformers, tokenizing a text over 77 tokens: "will result in indexing errors". Not here:
# every prompt weighting encodes long prompts in 77-token chunks (sdcog.denoise.prompts).
logging.getLogger("transformers.tokenization_utils_base").addFilter(
    _Drop("will result in indexing errors")
)
# diffusers, when a model is cast with .to(dtype): "modules that should be kept in float32: []",
# with none to keep.
logging.getLogger("diffusers.models.modeling_utils").addFilter(
    _Drop("should be kept in float32: []")
)
# Cog 0.23 renamed BasePredictor/predict() to BaseRunner/run(). predict.py keeps the names that
# `cog build` of every Cog version reads, and Replicate's docs use.
warnings.filterwarnings(
    "ignore", r".*(predict\(\) is deprecated|BasePredictor is deprecated)", DeprecationWarning
)
