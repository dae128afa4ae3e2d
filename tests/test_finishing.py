"""The finishing stages in-process on tiny weights (face fix, upscale, hires_upscaler): what they
change, what they leave alone, and the checks that refuse them before any work."""

import dataclasses
import io
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdcog.denoise.face_fix import FaceFix
from sdcog.generate import Generator
from sdcog.request.request import Request

PHOTOS = Path(__file__).parent / "data/photos"
ASTRONAUT, ROCKET = PHOTOS / "astronaut.jpg", PHOTOS / "rocket.jpg"
FACE = (172, 70, 282, 190)  # tests/test_faces.py
SMALL = {"prompt": "a portrait", "num_inference_steps": 5, "seed": 3}


@pytest.fixture(scope="module")
def generator(tiny_weights) -> Generator:
    return Generator(tiny_weights)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def finish(generator: Generator, photo: Path, **inputs) -> tuple[np.ndarray, str]:
    """The photo finished only (prompt_strength 0); what the prediction printed."""
    request = Request.from_inputs({**SMALL, "image": str(photo), "prompt_strength": 0, **inputs},
                                  local_paths=True)  # fmt: skip
    with redirect_stdout(io.StringIO()) as printed:
        [path] = generator(request).paths
    return pixels(path), printed.getvalue()


def changed_box(before: np.ndarray, after: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(np.abs(before - after).sum(-1))
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_the_face_fix_repaints_the_face_and_nothing_outside_its_padded_box(generator):
    out, log = finish(generator, ASTRONAUT, face_fix=True, face_fix_padding=24)
    before = pixels(ASTRONAUT)
    assert out.shape == before.shape  # the size is kept
    left, top, right, bottom = changed_box(before, out)
    assert "face fix: output 0: 1 found, 1 fixed" in log
    # Inside the detected face's box plus 24 pixels, and most of the face itself.
    assert (left, top) >= (FACE[0] - 24 - 6, FACE[1] - 24 - 6), (left, top)
    assert (right, bottom) <= (FACE[2] + 24 + 6, FACE[3] + 24 + 6), (right, bottom)
    assert (right - left) * (bottom - top) > 0.8 * (FACE[2] - FACE[0]) * (FACE[3] - FACE[1])


def test_a_photo_without_a_face_comes_back_untouched_with_a_log_line(generator):
    out, log = finish(generator, ROCKET, face_fix=True)
    assert np.array_equal(out, pixels(ROCKET))
    assert "face fix: no face found in output 0" in log


def test_the_face_prompt_and_strength_steer_the_repaint(generator):
    plain, _ = finish(generator, ASTRONAUT, face_fix=True)
    prompted, _ = finish(generator, ASTRONAUT, face_fix=True, face_fix_prompt="a smiling face")
    stronger, _ = finish(generator, ASTRONAUT, face_fix=True, face_fix_strength=0.8)
    before = pixels(ASTRONAUT)
    assert not np.array_equal(plain, prompted)
    assert np.abs(stronger - before).sum() > np.abs(plain - before).sum()


def test_a_requests_lora_reaches_the_face(generator, adapter_refs):
    plain, _ = finish(generator, ASTRONAUT, face_fix=True)
    lora, _ = finish(generator, ASTRONAUT, face_fix=True, lora_weights=[adapter_refs["sd"]["a"]])
    again, _ = finish(generator, ASTRONAUT, face_fix=True)
    assert not np.array_equal(plain, lora)
    assert np.array_equal(plain, again)  # and leaves with the request


def test_a_requests_embedding_reaches_the_face_prompt(generator, adapter_refs):
    """The face prompt names the embedding's token: with the embedding loaded it is the
    learned vector, without it the token's text; the faces differ."""
    face = {"face_fix": True, "face_fix_prompt": "a <tok> face"}
    plain, _ = finish(generator, ASTRONAUT, **face)
    embedded, _ = finish(generator, ASTRONAUT, **face,
                         textual_inversions=[adapter_refs["sd"]["embedding"]])  # fmt: skip
    assert not np.array_equal(plain, embedded)
    assert np.array_equal(plain, finish(generator, ASTRONAUT, **face)[0])


def test_max_faces_fixes_the_largest(generator, tmp_path):
    two = Image.new("RGB", (1024, 512))
    two.paste(Image.open(ASTRONAUT).resize((256, 256)), (0, 128))
    two.paste(Image.open(ASTRONAUT), (512, 0))
    two.save(tmp_path / "two.png")
    out, log = finish(generator, tmp_path / "two.png", face_fix=True, face_fix_max_faces=1)
    assert "2 found, 1 fixed" in log
    before = pixels(tmp_path / "two.png")
    assert np.array_equal(out[:, :512], before[:, :512])  # the small face is left as it was
    assert not np.array_equal(out[:, 512:], before[:, 512:])


def test_upscale_enlarges_a_generated_image_and_a_given_one(generator):
    request = Request(width=128, height=96, upscale=2.5, **SMALL)
    with redirect_stdout(io.StringIO()) as printed:
        [path] = generator(request).paths
    assert Image.open(path).size == (320, 240)
    assert "upscale: 2.5x to 320x240" in printed.getvalue()
    out, _ = finish(generator, ROCKET, upscale=1.5)
    assert out.shape[:2] == (round(427 * 1.5), 960)


def test_face_fix_comes_before_the_upscale(generator, monkeypatch):
    order: list[str] = []
    for name in ("faces", "upscaler"):
        part = getattr(generator, name)
        monkeypatch.setattr(generator, name, _Recording(part, name, order))
    generator.checks = dataclasses.replace(generator.checks, faces=generator.faces,
                                           upscaler=generator.upscaler)  # fmt: skip
    finish(generator, ASTRONAUT, face_fix=True, upscale=2)
    assert order == ["faces", "upscaler"]


class _Recording:
    def __init__(self, part, name: str, order: list[str]) -> None:
        self.part, self.name, self.order = part, name, order

    def __call__(self, *args, **kwargs):
        self.order.append(self.name)
        return self.part(*args, **kwargs)


def test_the_hires_fix_can_enlarge_with_the_upscaler(generator):
    def run(**inputs) -> np.ndarray:
        request = Request(width=128, height=128, hires_scale=2, **SMALL, **inputs)
        [path] = generator(request).paths
        return pixels(path)

    lanczos, upscaled = run(), run(hires_upscaler="upscaler")
    assert lanczos.shape == upscaled.shape == (128, 128, 3)
    assert not np.array_equal(lanczos, upscaled)


@pytest.mark.parametrize(
    "inputs, refused",
    [
        ({"upscale": 2}, "upscale: this build has no upscaler (pin [upscaler]"),
        ({"hires_scale": 2, "hires_upscaler": "upscaler"}, "hires_upscaler: this build has no"),
        ({"face_fix": True}, "face_fix: this build has no face detector (pin [face_detector]"),
    ],
)
def test_a_build_without_the_model_refuses_naming_the_input(generator, inputs, refused):
    bare = dataclasses.replace(generator.checks, upscaler=None, faces=None)
    with pytest.raises(ValueError) as raised:
        bare.request(Request(prompt="x", **inputs))
    assert str(raised.value).startswith(refused)


@pytest.mark.parametrize(
    "inputs, refused",
    [
        ({"face_fix_strength": 0.6}, "face_fix_strength: the face fix is off; set face_fix"),
        ({"hires_upscaler": "upscaler"}, "hires_upscaler: the hires fix is off"),
        ({"upscale": 1.33}, "upscale: 1.33 is not a multiple of 0.05; take 1.35"),
        ({"image": ROCKET, "prompt_strength": 0}, "prompt_strength: 0 keeps the image as given;"),
        ({"image": ROCKET, "prompt_strength": 0, "upscale": 2, "mask": ROCKET},
         "prompt_strength: 0 keeps the image as given and only finishes it, but a mask"),
        ({"image": ROCKET, "prompt_strength": 0, "upscale": 2, "num_outputs": 2},
         "num_outputs: with prompt_strength 0 there is one image"),
        ({"face_fix": True, "num_inference_steps": 2}, "face_fix_strength: face_fix_strength x"),
    ],
)  # fmt: skip
def test_finishing_inputs_that_mean_nothing_are_refused(generator, inputs, refused):
    with pytest.raises(ValueError) as raised:
        generator.checks.request(Request(prompt="x", **inputs))
    assert str(raised.value).startswith(refused)


def test_an_upscale_past_the_pixel_limit_is_refused_before_any_work(generator, tmp_path):
    Image.new("RGB", (2100, 2100), (40, 80, 120)).save(tmp_path / "big.png")
    inputs = {**SMALL, "image": str(tmp_path / "big.png"), "prompt_strength": 0, "upscale": 4}
    request = Request.from_inputs(inputs, local_paths=True)
    with pytest.raises(ValueError, match=r"^upscale: 2100x2100 upscaled 4x is 8400x8400"):
        generator(request)


def test_the_face_pass_runs_without_the_requests_controlnets(generator):
    slot = {"controlnet_1": "canny", "controlnet_1_image": str(ASTRONAUT)}
    request = Request.from_inputs({**SMALL, **slot}, local_paths=True)
    fix = FaceFix.of(request, generator.pipelines, generator.faces, "x", None, None, lambda *a: {})
    assert "controlnet" not in fix.pipe.components
    assert type(fix.pipe).__name__ == "StableDiffusionInpaintPipeline"
