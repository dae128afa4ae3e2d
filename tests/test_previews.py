"""Previews (preview_every) in-process: every N steps each output's latents decoded by the
TAESD-shaped decoder and written as a JPEG, the final images the same bytes as without."""

import hashlib
import re
import shutil
import threading
from pathlib import Path

import pytest
from helpers import shapes
from PIL import Image

from sdcog.common.cancel import PredictionCancelledError
from sdcog.generate import Generator
from sdcog.request.control_slots import ControlSlot
from sdcog.request.request import Request

SMALL = {"prompt": "a lighthouse", "num_inference_steps": 6, "width": 128, "height": 128,
         "seed": 3}  # fmt: skip
NAME = re.compile(r"preview-(\d+)-step(\d+)-[0-9a-f]{8}\.jpg")


@pytest.fixture(scope="module")
def generators(make_weights) -> dict[str, Generator]:
    return {"sd": Generator(make_weights("sd")), "sdxl": Generator(make_weights("sdxl"))}


def run(generator: Generator, **inputs) -> tuple[list[str], list[Path]]:
    """The final images' sha256 and the previews, in the order they were sent."""
    sent: list[Path] = []
    generation = generator(Request(**(SMALL | inputs)), emit=sent.append)
    digests = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in generation.paths]
    return digests, sent


def steps_of(previews: list[Path]) -> list[tuple[int, int]]:
    return [tuple(map(int, NAME.fullmatch(p.name).groups())) for p in previews]


@pytest.mark.parametrize(
    ("family", "inputs", "expected"),
    [
        ("sd", {}, [(0, 2), (0, 4), (0, 6)]),
        ("sd", {"num_outputs": 2, "preview_every": 3}, [(0, 3), (1, 3), (0, 6), (1, 6)]),
        # 6 steps, then 4 x strength 0.5 in the second pass: counted on.
        ("sd", {"hires_scale": 2, "hires_steps": 4}, [(0, 2), (0, 4), (0, 6), (0, 8)]),
        ("sd", {"controlnet": True}, [(0, 2), (0, 4), (0, 6)]),
        # 6 base steps, then 10 x strength 0.3 refiner steps: counted on.
        ("sdxl", {"refine": "base_image_refiner", "refine_steps": 10, "preview_every": 3},
         [(0, 3), (0, 6), (0, 9)]),
        ("sdxl", {"refine": "expert_ensemble_refiner", "high_noise_frac": 0.5},
         [(0, 2), (0, 4), (0, 6)]),
    ],
    ids=["txt2img", "batch", "hires", "controlnet", "base-image-refiner", "ensemble"],
)  # fmt: skip
def test_previews_leave_the_images_as_they_were(generators, tmp_path, family, inputs, expected):
    inputs = dict(inputs)
    if inputs.pop("controlnet", None):
        shapes((128, 128)).save(tmp_path / "map.png")
        inputs["controlnets"] = (ControlSlot(1, "canny", tmp_path / "map.png", preprocess=False),)
    generator = generators[family]
    plain, none_sent = run(generator, **(inputs | {"preview_every": 0}))
    with_previews, sent = run(generator, **({"preview_every": 2} | inputs))
    assert with_previews == plain and not none_sent  # the same bytes
    assert steps_of(sent) == expected
    for path in sent:
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert image.size[0] in (64, 128)  # the pass's size (hires: the first is smaller)


def test_without_a_decoder_previews_are_refused_naming_the_input(make_weights, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(make_weights("sd"), weights, ignore=shutil.ignore_patterns("taesd"))
    generator = Generator(weights)
    with pytest.raises(ValueError, match=r"^preview_every: this build has no preview decoder"):
        generator(Request(**SMALL, preview_every=2))
    assert generator(Request(**SMALL)).paths  # the rest of the build serves


def test_a_cancelled_prediction_has_sent_its_previews(generators):
    cancelled, sent = threading.Event(), []

    def emit(path: Path) -> None:
        sent.append(path)
        if len(sent) == 2:
            cancelled.set()

    request = Request(**(SMALL | {"num_inference_steps": 20, "preview_every": 2}))
    with pytest.raises(PredictionCancelledError):
        generators["sd"](request, cancelled, emit)
    assert steps_of(sent) == [(0, 2), (0, 4)] and all(p.exists() for p in sent)
