"""The face detector, real weights on real photographs: NASA's portrait of Eileen Collins
(public domain; scikit-image's `data.astronaut()`) and SpaceX's rocket launch (public domain;
`data.rocket()`), both from scikit-image's data, in tests/data/photos."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from sdcog.adapters.faces import FaceDetector

PHOTOS = Path(__file__).parent / "data/photos"
# Eileen Collins' face in astronaut.jpg, hairline to chin and ear to ear, read off the photo.
FACE = (172, 70, 282, 190)


def overlap(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """Intersection over union of two boxes (left, top, right, bottom)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0, width) * max(0, height)
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@pytest.fixture(scope="module")
def detector(face_detector) -> FaceDetector:
    return FaceDetector(next(face_detector.glob("*.onnx")), torch.device("cpu"))


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.open(PHOTOS / "astronaut.jpg").convert("RGB")


def test_the_box_lands_on_the_face(detector, astronaut):
    [face] = detector(astronaut, 0.5)
    assert overlap(face.box, FACE) > 0.7, face
    assert face.score > 0.8


def test_the_box_follows_the_face_in_a_larger_wider_picture(detector, astronaut):
    """Letterboxing and the way back: the photo at an offset in a 1200x700 picture."""
    picture = Image.new("RGB", (1200, 700), (90, 110, 130))
    picture.paste(astronaut, (600, 150))
    [face] = detector(picture, 0.5)
    moved = (FACE[0] + 600, FACE[1] + 150, FACE[2] + 600, FACE[3] + 150)
    assert overlap(face.box, moved) > 0.6, face


def test_a_photo_without_a_face_has_none(detector):
    assert detector(Image.open(PHOTOS / "rocket.jpg"), 0.5) == []


def test_confidence_is_the_lowest_score_kept(detector, astronaut):
    [face] = detector(astronaut, 0.5)
    assert detector(astronaut, min(1.0, face.score + 0.01)) == []


def test_faces_come_largest_first(detector, astronaut):
    picture = Image.new("RGB", (1024, 512))
    picture.paste(astronaut.resize((256, 256)), (0, 128))
    picture.paste(astronaut, (512, 0))
    faces = detector(picture, 0.5)
    assert len(faces) == 2
    assert faces[0].box[0] > 512 and faces[1].box[0] < 256
