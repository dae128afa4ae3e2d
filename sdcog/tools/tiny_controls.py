"""Tiny random ControlNets and annotator models in the layouts their pins download.

SD: one ControlNet per pin entry (lllyasviel's layout: config.json and the fp16 weights).
SDXL: one union model (xinsir's layout). Annotators: Depth Anything V2 Small's layout, and
DWPose's two ONNX files with the real models' input and output shapes (constant-ish graphs: their
keypoints are arbitrary but fixed, so the pose path runs end to end).
"""

from pathlib import Path

import numpy as np
import torch
from diffusers import ControlNetModel, ControlNetUnionModel, UNet2DConditionModel

from ..adapters.annotators import DEPTH_ENTRY, POSE_ENTRY
from ..adapters.controlnets import KIND_ENTRIES, UNION_ENTRY
from ..adapters.pose import DETECT_SIZE, DETECTOR, POSE_MODEL, POSE_SIZE, SIMCC_SPLIT

CONDITIONING_CHANNELS = (8, 8, 8, 16)  # three stride-2 steps: the latents' 8x
DETECTIONS = 8400  # YOLOX's grid cells at 640x640 (strides 8, 16, 32)
WHOLEBODY_KEYPOINTS = 133


def _randomise_zero_layers(model: torch.nn.Module, std: float = 0.5) -> None:
    """ControlNets start with zeroed output layers (they change nothing until trained). The
    control image's encoder is scaled up so that the map, not only the kind, shows in images."""
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0, std)
        for parameter in model.controlnet_cond_embedding.parameters():
            parameter.mul_(4)


def write_controlnets(directory: Path, family: str, unet: UNet2DConditionModel) -> None:
    if family == "sdxl":
        torch.manual_seed(1)
        # The transformer over the conditions is as wide as the first block (320 in SDXL).
        block = unet.config.block_out_channels[0]
        config = ControlNetUnionModel.from_unet(
            unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS,
            load_weights_from_unet=False,
        ).config  # fmt: skip
        union = ControlNetUnionModel.from_config(
            config, num_trans_channel=block, num_trans_head=2, num_proj_channel=block
        )
        _randomise_zero_layers(union)
        union.save_pretrained(directory / UNION_ENTRY, safe_serialization=True)
        return
    for seed, entry in enumerate(sorted(set(KIND_ENTRIES.values())), start=1):
        torch.manual_seed(seed)
        controlnet = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS
        )
        _randomise_zero_layers(controlnet)
        controlnet.half().save_pretrained(
            directory / entry, variant="fp16", safe_serialization=True
        )


def write_annotators(directory: Path) -> None:
    _write_depth(directory / DEPTH_ENTRY)
    _write_pose(directory / POSE_ENTRY)


def _write_depth(directory: Path) -> None:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTImageProcessor

    torch.manual_seed(2)
    config = DepthAnythingConfig(
        backbone_config={
            "model_type": "dinov2", "hidden_size": 16, "num_attention_heads": 2,
            "num_hidden_layers": 4, "intermediate_size": 32, "image_size": 56, "patch_size": 14,
            "out_indices": [1, 2, 3, 4], "reshape_hidden_states": False,
        },
        reassemble_hidden_size=16, neck_hidden_sizes=[8, 8, 8, 8], fusion_hidden_size=8,
        head_hidden_size=8,
    )  # fmt: skip
    DepthAnythingForDepthEstimation(config).save_pretrained(directory, safe_serialization=True)
    # Depth Anything V2's preprocessing, at 56 instead of 518 pixels.
    DPTImageProcessor(
        size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
        resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(directory)  # fmt: skip


def _constant_model(path: Path, input_shape: list[int], outputs: dict[str, np.ndarray]) -> None:
    """An ONNX model with the given input and outputs: each output is a fixed tensor plus a
    small multiple of the input's mean, so it depends on the image but stays near the constant."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0)]
    nodes.append(helper.make_node("Mul", ["mean", "tiny"], ["nudge"]))
    initializers = [numpy_helper.from_array(np.array(1e-4, np.float32), "tiny")]
    for name, value in outputs.items():
        initializers.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_base"))
        nodes.append(helper.make_node("Add", [f"{name}_base", "nudge"], [name]))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(v.shape))
         for n, v in outputs.items()],
        initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _write_pose(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    # The detector: YOLOX's raw output, (x, y, log w, log h, objectness, 80 class scores) per
    # cell. One cell in the middle of the image is a confident person of a plausible size.
    detections = np.concatenate(
        [rng.normal(0, 0.5, (DETECTIONS, 4)), rng.uniform(0, 0.2, (DETECTIONS, 81))], 1
    )
    middle = (DETECT_SIZE // 8) * (DETECT_SIZE // 16) + DETECT_SIZE // 16  # stride-8 grid
    detections[middle, :6] = [0.0, 0.0, np.log(32), np.log(48), 0.95, 0.95]
    _constant_model(directory / DETECTOR, [1, 3, DETECT_SIZE, DETECT_SIZE],
                    {"output": detections[None]})  # fmt: skip
    # The pose model: SimCC logits per keypoint along x and y, peaked at random positions.
    width, height = (int(side * SIMCC_SPLIT) for side in POSE_SIZE)
    simcc = {}
    for name, bins in (("simcc_x", width), ("simcc_y", height)):
        logits = rng.uniform(0, 0.1, (1, WHOLEBODY_KEYPOINTS, bins))
        peaks = rng.integers(bins // 4, 3 * bins // 4, WHOLEBODY_KEYPOINTS)
        logits[0, np.arange(WHOLEBODY_KEYPOINTS), peaks] = 0.9
        simcc[name] = logits
    _constant_model(directory / POSE_MODEL, [1, 3, POSE_SIZE[1], POSE_SIZE[0]], simcc)
