"""Face boxes for the face fix: MediaPipe's BlazeFace (the back-camera model, 256x256 input;
Apache-2.0) as ONNX, read with onnxruntime ([face_detector] in the pins).

The model scores 896 fixed anchors (a 16x16 grid of 2 at stride 16, an 8x8 grid of 6 at stride
32) and regresses a box around each; this module letterboxes the image into the model's square,
decodes the boxes as MediaPipe's graph does and keeps the best of overlapping ones.
"""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from .pose import session  # onnxruntime, imported with its telemetry off

ENTRY = "face_detector"
INPUT = 256
GRIDS = ((16, 2), (32, 6))  # (stride, anchors per cell), in the order of the model's outputs
OVERLAP = 0.3  # boxes overlapping more than this (IoU) are one face


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]  # left, top, right, bottom, in image pixels
    score: float

    @property
    def area(self) -> int:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


def _anchors() -> np.ndarray:
    """The anchors' centres, as fractions of the input (MediaPipe's SSD anchors, fixed size)."""
    centres = []
    for stride, count in GRIDS:
        cells = INPUT // stride
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        grid = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], -1).reshape(-1, 1, 2)
        centres.append(np.repeat(grid, count, 1).reshape(-1, 2))
    return np.concatenate(centres).astype(np.float32)


class FaceDetector:
    def __init__(self, model: Path, device: torch.device) -> None:
        self.session = session(model, device)
        self.anchors = _anchors()

    @classmethod
    def load(cls, weights_dir: Path, device: torch.device) -> "FaceDetector | None":
        """The pinned detector, or None for a build without one."""
        files = sorted((weights_dir / ENTRY).glob("*.onnx"))
        return cls(files[0], device) if files else None

    def __call__(self, image: Image.Image, confidence: float) -> list[Face]:
        """The faces scoring at least `confidence`, largest first."""
        side = max(image.size)
        square = Image.new("RGB", (side, side))  # letterboxed: the model's input is square
        square.paste(image.convert("RGB"))
        pixels = np.asarray(square.resize((INPUT, INPUT), Image.Resampling.BILINEAR), np.float32)
        batch = (pixels / 127.5 - 1)[None]  # NHWC, -1 to 1
        named = dict(zip([o.name for o in self.session.get_outputs()],
                         self.session.run(None, {self.session.get_inputs()[0].name: batch}),
                         strict=True))  # fmt: skip
        logits = np.concatenate([named["Identity:0"][0, :, 0], named["Identity_1:0"][0, :, 0]])
        raw = np.concatenate([named["Identity_2:0"][0], named["Identity_3:0"][0]])
        scores = 0.5 * (1 + np.tanh(logits / 2))  # the logistic function, without overflow
        centres = raw[:, :2] / INPUT + self.anchors
        sizes = raw[:, 2:4] / INPUT
        boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], 1) * side
        keep = cv2.dnn.NMSBoxes(
            [[float(x0), float(y0), float(x1 - x0), float(y1 - y0)] for x0, y0, x1, y1 in boxes],
            scores.astype(float).tolist(), confidence, OVERLAP,
        )  # fmt: skip
        faces = []
        for index in np.asarray(keep, int).reshape(-1):
            x0, y0, x1, y1 = boxes[index]
            box = (max(0, round(x0)), max(0, round(y0)),
                   min(image.width, round(x1)), min(image.height, round(y1)))  # fmt: skip
            if box[2] > box[0] and box[3] > box[1]:
                faces.append(Face(box, float(scores[index])))
        return sorted(faces, key=lambda face: face.area, reverse=True)
