"""Annotators: OpenCV maps, the pose drawing, and the model-backed ones on tiny weights."""

import cv2
import numpy as np
import pytest
import torch
from helpers import shapes
from PIL import Image

from sdcog.adapters import annotators, pose
from sdcog.adapters.annotators import Annotators


def test_canny_is_opencv_canny_at_100_200():
    image = shapes()
    expected = cv2.Canny(np.asarray(image), 100, 200)
    got = np.asarray(annotators.canny(image))
    assert got.shape == (*expected.shape, 3)
    assert (got == expected[:, :, None]).all()
    assert expected.any()


@pytest.mark.parametrize("kind", ["lineart", "softedge", "scribble"])
def test_line_maps_are_white_on_black_along_edges(kind):
    image = shapes()
    control = np.asarray(getattr(annotators, kind)(image).convert("L"))
    assert control.shape == (image.height, image.width)
    assert control[0:10, 0:10].max() == 0  # flat background: no line
    assert control[45:55, 15:25].max() > 100  # the disc's left edge
    flat = np.asarray(getattr(annotators, kind)(Image.new("RGB", (64, 64), "grey")))
    assert not flat.any()


def test_scribble_strokes_are_thicker_than_canny_lines():
    image = shapes()
    assert (np.asarray(annotators.scribble(image)) > 0).sum() > 2 * (
        np.asarray(annotators.canny(image)) > 0
    ).sum()


# Fixed COCO-WholeBody keypoints: a person standing in a 200x200 image, every point seen.
COCO_BODY = {
    0: (100, 40), 1: (95, 35), 2: (105, 35), 3: (90, 38), 4: (110, 38), 5: (80, 70),
    6: (120, 70), 7: (70, 100), 8: (130, 100), 9: (65, 130), 10: (135, 130), 11: (88, 130),
    12: (112, 130), 13: (86, 160), 14: (114, 160), 15: (85, 190), 16: (115, 190),
}  # fmt: skip


def person(face_at: tuple[int, int] = (100, 42)) -> np.ndarray:
    keypoints = np.zeros((133, 3))
    for index, (x, y) in COCO_BODY.items():
        keypoints[index] = (x, y, 0.9)
    keypoints[pose.FACE] = (*face_at, 0.9)
    return keypoints


def test_pose_drawing_uses_openpose_limb_colours():
    canvas = np.asarray(pose.draw([person()], (200, 200), face=False))
    # Limb 0 joins the neck (the shoulders' middle, (100, 70)) and the right shoulder (COCO 6,
    # (120, 70)): red at 60 %. Its midpoint is clear of every keypoint's dot.
    assert tuple(canvas[70, 110]) == (153, 0, 0)
    # Limb 1, neck to left shoulder (80, 70): orange (255, 85, 0) at 60 %.
    assert tuple(canvas[70, 90]) == (153, 51, 0)
    # Keypoints in full colour: the right elbow (OpenPose 3) is yellow.
    assert tuple(canvas[100, 130]) == (255, 255, 0)
    assert tuple(canvas[5, 5]) == (0, 0, 0)


def test_face_points_only_with_openpose_face():
    with_face = np.asarray(pose.draw([person(face_at=(160, 20))], (200, 200), face=True))
    without = np.asarray(pose.draw([person(face_at=(160, 20))], (200, 200), face=False))
    assert tuple(with_face[20, 160]) == (255, 255, 255)
    assert tuple(without[20, 160]) == (0, 0, 0)


def test_unseen_keypoints_are_not_drawn():
    keypoints = person()
    keypoints[6, 2] = 0.1  # right shoulder unseen: no neck, no limbs from it
    canvas = np.asarray(pose.draw([keypoints], (200, 200), face=False))
    assert tuple(canvas[70, 110]) == (0, 0, 0)


def test_pose_and_depth_models_run_on_their_pinned_layout(tiny_weights):
    found = Annotators(tiny_weights, torch.device("cpu"))
    image = shapes((300, 200))
    for kind in ("openpose", "openpose_face", "depth"):
        control = np.asarray(found(kind, image, "controlnet_1_preprocess"))
        assert control.shape == (200, 300, 3)
        assert control.any(), kind
    depth = np.asarray(found("depth", image, "x").convert("L"))
    assert depth.min() == 0 and depth.max() == 255  # normalised: nearest white, farthest black


def test_a_missing_annotator_model_names_its_pin(tmp_path):
    found = Annotators(tmp_path, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"controlnet_2_preprocess: .*depth.*\[annotator_depth\]"):
        found("depth", shapes(), "controlnet_2_preprocess")
