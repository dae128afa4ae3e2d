"""Annotators: an image -> the control map a ControlNet of that kind was trained on.

Edges and lines come from OpenCV; depth from Depth Anything V2 Small (transformers, safetensors);
pose from DWPose's ONNX models (sdcog.adapters.pose). Model-backed annotators load on first use from
their pin entries (weights/annotator_depth/, weights/annotator_pose/) and stay loaded. Every map is
white (or coloured) on black, RGB, the size of the image it was made from.
"""

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from .pose import PoseEstimator

CANNY_THRESHOLDS = (100, 200)
DEPTH_ENTRY = "annotator_depth"
POSE_ENTRY = "annotator_pose"


def _rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(gray).convert("RGB")


def canny(image: Image.Image, thresholds: tuple[int, int] = CANNY_THRESHOLDS) -> Image.Image:
    return _rgb(cv2.Canny(np.asarray(image.convert("RGB")), *thresholds))


def lineart(image: Image.Image) -> Image.Image:
    """Thin dark-side outlines: pixels clearly darker than their neighbourhood."""
    gray = cv2.GaussianBlur(np.asarray(image.convert("L")), (3, 3), 0)
    return _rgb(cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C,
                                      cv2.THRESH_BINARY_INV, 9, 6))  # fmt: skip


def softedge(image: Image.Image) -> Image.Image:
    """Soft edges (HED-like): the gradient magnitude of a smoothed image, scaled to 0..255."""
    gray = cv2.GaussianBlur(np.asarray(image.convert("L")).astype(np.float32), (5, 5), 0)
    magnitude = cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    return _rgb(cv2.normalize(magnitude, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8))


def scribble(image: Image.Image) -> Image.Image:
    """Thick strokes along the main edges, as a hand scribble would be."""
    gray = cv2.GaussianBlur(np.asarray(image.convert("L")), (7, 7), 0)
    edges = cv2.Canny(gray, *CANNY_THRESHOLDS)
    return _rgb(cv2.dilate(edges, np.ones((3, 3), np.uint8), iterations=2))


def tile(image: Image.Image) -> Image.Image:
    """The tile ControlNet is conditioned on the image itself."""
    return image.convert("RGB")


class DepthEstimator:
    """Depth Anything V2 (relative depth): near is white, far is black."""

    def __init__(self, folder: Path, device: torch.device) -> None:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        self.processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        self.model = AutoModelForDepthEstimation.from_pretrained(folder, local_files_only=True)
        self.model.to(device).eval()

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> Image.Image:
        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt")
        depth = self.model(pixel_values=inputs["pixel_values"].to(self.model.device))
        depth = torch.nn.functional.interpolate(
            depth.predicted_depth[:, None].float(), size=(image.height, image.width),
            mode="bicubic", align_corners=False,
        )[0, 0]  # fmt: skip
        span = depth.max() - depth.min()  # relative depth: only its ordering means anything
        depth = (depth - depth.min()) / span if span > 0 else torch.zeros_like(depth)
        return _rgb((depth * 255).round().clamp(0, 255).byte().cpu().numpy())


class Annotators:
    """kind -> its annotator; the model-backed ones are loaded on first use."""

    def __init__(self, weights_dir: Path, device: torch.device) -> None:
        self.weights_dir = weights_dir
        self.device = device
        self._loaded: dict[str, Callable[[Image.Image], Image.Image]] = {}
        self.kinds: dict[str, Callable[[Image.Image], Image.Image]] = {
            "canny": canny,
            "lineart": lineart,
            "softedge": softedge,
            "scribble": scribble,
            "tile": tile,
            "depth": lambda image: self._model(DEPTH_ENTRY, DepthEstimator)(image),
            "openpose": lambda image: self._model(POSE_ENTRY, PoseEstimator)(image, face=False),
            "openpose_face": lambda image: self._model(POSE_ENTRY, PoseEstimator)(image, face=True),
        }

    def __call__(self, kind: str, image: Image.Image, input_name: str) -> Image.Image:
        try:
            return self.kinds[kind](image)
        except FileNotFoundError as e:
            raise ValueError(
                f"{input_name}: preprocessing for {kind} needs {e.args[0]}; or send a ready "
                f"control map with {input_name}=false"
            ) from None

    def _model(self, entry: str, load: Callable) -> Callable:
        if entry not in self._loaded:
            folder = self.weights_dir / entry
            if not folder.is_dir():
                raise FileNotFoundError(f"its model, pinned as [{entry}] in weights/pins.toml")
            print(f"loading the {entry} model")
            self._loaded[entry] = load(folder, self.device)
        return self._loaded[entry]
