"""Pose maps for the OpenPose ControlNets, from DWPose's ONNX models (no pickles, no torchvision).

DWPose (IDEA-Research, Apache-2.0) is a YOLOX person detector plus an RTMPose whole-body model
(COCO-WholeBody: 17 body, 6 foot, 68 face, 42 hand keypoints) read out through SimCC. The body
is converted to OpenPose's 18 keypoints and drawn in OpenPose's colours on black, as the
ControlNets were trained; `face=True` adds the 68 face points as white dots (no hands).
"""

import math
import os
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

# Once a session is open, onnxruntime sends telemetry to mobile.events.data.microsoft.com on a
# timer (through the environment's HTTPS proxy, if one is set). A model server does not phone
# home: this variable, read when onnxruntime is imported, stops it (disable_telemetry_events()
# does not). Here rather than in each way of starting the server: none can then forget it.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"
import onnxruntime as ort  # noqa: E402

DETECTOR = "yolox_l.onnx"
POSE_MODEL = "dw-ll_ucoco_384.onnx"
DETECT_SIZE = 640
POSE_SIZE = (288, 384)  # width, height
SIMCC_SPLIT = 2.0
BOX_PADDING = 1.25
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
PERSON_SCORE, NMS_IOU, VISIBLE = 0.3, 0.45, 0.3
FACE = slice(23, 91)  # COCO-WholeBody's 68 face keypoints

# OpenPose's 18 body keypoints, each from COCO's 17 (the neck, 1, is the shoulders' middle).
OPENPOSE_FROM_COCO = [0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
# OpenPose's limbs (pairs of keypoints) and its colour per limb and per keypoint (RGB).
LIMBS = [
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
    (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
]  # fmt: skip
COLORS = [
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
]  # fmt: skip
LIMB_BRIGHTNESS = 0.6
STICK_WIDTH, POINT_RADIUS, FACE_RADIUS = 4, 4, 3


def session(model: Path, device: torch.device) -> ort.InferenceSession:
    """An onnxruntime session for `model`, on CUDA when the device is and onnxruntime has it."""
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(model, providers=providers)


class PoseEstimator:
    def __init__(self, folder: Path, device: torch.device) -> None:
        for name in (DETECTOR, POSE_MODEL):
            if not (folder / name).exists():
                raise FileNotFoundError(f"{folder / name}, pinned as [{folder.name}]")
        self.detector = session(folder / DETECTOR, device)
        self.pose = session(folder / POSE_MODEL, device)

    def __call__(self, image: Image.Image, face: bool) -> Image.Image:
        rgb = np.asarray(image.convert("RGB"))
        people = [self._keypoints(rgb, box) for box in self._people(rgb)]
        return draw(people, image.size, face)

    def _people(self, rgb: np.ndarray) -> np.ndarray:
        """Person boxes (x0, y0, x1, y1) in image pixels, from YOLOX's raw grid output."""
        height, width = rgb.shape[:2]
        ratio = min(DETECT_SIZE / height, DETECT_SIZE / width)
        resized = cv2.resize(rgb[:, :, ::-1], (int(width * ratio), int(height * ratio)))
        padded = np.full((DETECT_SIZE, DETECT_SIZE, 3), 114, np.float32)  # YOLOX's grey pad
        padded[: resized.shape[0], : resized.shape[1]] = resized
        batch = padded.transpose(2, 0, 1)[None]
        output = self.detector.run(None, {self.detector.get_inputs()[0].name: batch})[0][0]
        grids, strides = [], []
        for stride in (8, 16, 32):
            cells = DETECT_SIZE // stride
            ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
            grids.append(np.stack([xs, ys], -1).reshape(-1, 2))
            strides.append(np.full((cells * cells, 1), stride))
        grid, stride = np.concatenate(grids), np.concatenate(strides)
        centres = (output[:, :2] + grid) * stride
        sizes = np.exp(np.clip(output[:, 2:4], -10, 10)) * stride
        scores = output[:, 4] * output[:, 5]  # objectness x "person" (COCO class 0)
        boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], 1) / ratio
        keep = cv2.dnn.NMSBoxes(
            [[float(x0), float(y0), float(x1 - x0), float(y1 - y0)] for x0, y0, x1, y1 in boxes],
            scores.astype(float).tolist(), PERSON_SCORE, NMS_IOU,
        )  # fmt: skip
        return boxes[np.asarray(keep, int).reshape(-1)]

    def _keypoints(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """One person's 133 whole-body keypoints as rows (x, y, score) in image pixels."""
        centre = (box[:2] + box[2:]) / 2
        scale = (box[2:] - box[:2]) * BOX_PADDING
        aspect = POSE_SIZE[0] / POSE_SIZE[1]
        if scale[0] > scale[1] * aspect:
            scale = np.array([scale[0], scale[0] / aspect])
        else:
            scale = np.array([scale[1] * aspect, scale[1]])
        # Affine map of the box onto the model's input (no rotation).
        factor = POSE_SIZE[0] / scale[0]
        warp = np.array(
            [[factor, 0, POSE_SIZE[0] / 2 - factor * centre[0]],
             [0, factor, POSE_SIZE[1] / 2 - factor * centre[1]]], np.float32,
        )  # fmt: skip
        crop = cv2.warpAffine(rgb, warp, POSE_SIZE, flags=cv2.INTER_LINEAR)
        batch = ((crop - MEAN) / STD).astype(np.float32).transpose(2, 0, 1)[None]
        simcc_x, simcc_y = self.pose.run(None, {self.pose.get_inputs()[0].name: batch})
        x = simcc_x[0].argmax(-1) / SIMCC_SPLIT
        y = simcc_y[0].argmax(-1) / SIMCC_SPLIT
        score = np.minimum(simcc_x[0].max(-1), simcc_y[0].max(-1))
        points = np.stack([x, y], -1) / factor + centre - np.array(POSE_SIZE) / (2 * factor)
        return np.concatenate([points, score[:, None]], 1)


def openpose_body(keypoints: np.ndarray) -> np.ndarray:
    """COCO-WholeBody rows (x, y, score) -> OpenPose's 18 body keypoints; invisible ones NaN."""
    body = []
    for coco in OPENPOSE_FROM_COCO:
        if coco is None:  # the neck: between the shoulders, when both are seen
            shoulders = keypoints[[5, 6]]
            seen = (shoulders[:, 2] > VISIBLE).all()
            body.append(shoulders[:, :2].mean(0) if seen else (np.nan, np.nan))
        else:
            seen = keypoints[coco, 2] > VISIBLE
            body.append(keypoints[coco, :2] if seen else (np.nan, np.nan))
    return np.array(body, float)


def draw(people: list[np.ndarray], size: tuple[int, int], face: bool) -> Image.Image:
    """OpenPose's drawing: limbs as ellipses at 60 % of their colour, keypoints as dots in full
    colour, face points (with `face`) as small white dots, all on black."""
    canvas = np.zeros((size[1], size[0], 3), np.uint8)
    for keypoints in people:
        body = openpose_body(keypoints)
        for (a, b), color in zip(LIMBS, COLORS, strict=False):
            if np.isnan(body[[a, b]]).any():
                continue
            (xa, ya), (xb, yb) = body[a], body[b]
            length = math.hypot(xa - xb, ya - yb)
            angle = math.degrees(math.atan2(ya - yb, xa - xb))
            polygon = cv2.ellipse2Poly(
                (int((xa + xb) / 2), int((ya + yb) / 2)),
                (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1,
            )  # fmt: skip
            cv2.fillConvexPoly(canvas, polygon, [int(c * LIMB_BRIGHTNESS) for c in color])
        for point, color in zip(body, COLORS, strict=True):
            if not np.isnan(point).any():
                cv2.circle(canvas, (int(point[0]), int(point[1])), POINT_RADIUS, color, -1)
        if face:
            for x, y, score in keypoints[FACE]:
                if score > VISIBLE:
                    cv2.circle(canvas, (int(x), int(y)), FACE_RADIUS, (255, 255, 255), -1)
    return Image.fromarray(canvas)
