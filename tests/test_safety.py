"""The real safety checker (tiny weights) with thresholds set around two images' scores."""

import numpy as np
import pytest
import torch
from PIL import Image

from sdcog.outputs.safety import SafetyChecker
from sdcog.tools.tiny_weights import write_safety


@pytest.fixture(scope="module")
def checker(tmp_path_factory):
    directory = tmp_path_factory.mktemp("safety")
    write_safety(directory)
    return SafetyChecker.load(directory, torch.device("cpu"), torch.float32)


def concept_score(checker: SafetyChecker, image: Image.Image) -> float:
    pixels = checker.processor([image], return_tensors="pt").pixel_values
    with torch.no_grad():
        embeds = checker.checker.visual_projection(checker.checker.vision_model(pixels)[1])
        embeds = torch.nn.functional.normalize(embeds)
        concepts = torch.nn.functional.normalize(checker.checker.concept_embeds)
        return float((embeds @ concepts.T)[0, 0])


def test_default_tiny_threshold_flags_nothing(checker):
    images = [Image.fromarray(np.full((64, 64, 3), v, np.uint8)) for v in (0, 128, 255)]
    assert checker.flags(images) == [False, False, False]


def test_only_the_image_over_the_threshold_is_flagged(checker):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)) for _ in range(6)]
    scores = [concept_score(checker, image) for image in images]
    low, high = sorted(range(6), key=scores.__getitem__)[::5]
    threshold = (scores[low] + scores[high]) / 2
    with torch.no_grad():
        checker.checker.concept_embeds_weights.fill_(1.0)
        checker.checker.concept_embeds_weights[0] = threshold
    try:
        flags = checker.flags([images[low], images[high]])
    finally:
        with torch.no_grad():
            checker.checker.concept_embeds_weights.fill_(1.0)
    assert flags == [False, True]
