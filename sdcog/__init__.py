"""Stable Diffusion behind Cog's predictions API: the logic that predict.py hands requests to."""

import logging


class _NoTorchvisionFallback(logging.Filter):
    """transformers says, at every start, that its image processors fall back to PIL without
    torchvision: this package never installs torchvision (it does not load against the pinned
    torch), and the PIL processors are the ones it uses. Nothing for a user to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionFallback())
