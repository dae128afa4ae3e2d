"""The upscaler: spandrel reads Real-ESRGAN's layout (tiny and full size) as ESRGAN 4x; tiles give
the whole image's pixels while no tile passes its bound; the factor asked is the size made."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdcog.models import upscalers
from sdcog.models.upscalers import MAX_UPSCALED_PIXELS, Upscaler, check_size
from sdcog.tools.tiny_finishing import rrdb_state_dict, write_upscaler

PHOTO = Path(__file__).parent / "data/photos/rocket.jpg"


@pytest.fixture(scope="module")
def upscaler(tmp_path_factory) -> Upscaler:
    folder = tmp_path_factory.mktemp("upscaler")
    write_upscaler(folder)
    return Upscaler.load(folder, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.open(PHOTO).convert("RGB").resize((150, 100))


@pytest.mark.parametrize("features, blocks", [(8, 1), (64, 23)], ids=["tiny", "full-size"])
def test_spandrel_reads_real_esrgans_layout_as_esrgan_4x(features, blocks):
    spandrel = upscalers._import_spandrel()
    model = spandrel.ModelLoader().load_from_state_dict(rrdb_state_dict(features, blocks))
    assert (model.architecture.id, model.scale, model.purpose) == ("ESRGAN", 4, "SR")
    parameters = sum(p.numel() for p in model.model.parameters())
    if blocks == 23:  # Real-ESRGAN x4plus's 16.7 million
        assert 16_600_000 < parameters < 16_800_000


def test_spandrel_is_imported_without_torchvision_left_behind():
    import sys

    upscalers._import_spandrel()
    assert "torchvision" not in sys.modules  # transformers would take it for the real one


def test_the_whole_image_is_upscaled_and_the_factor_is_the_size(upscaler, photo):
    for factor, size in [(4, (600, 400)), (2, (300, 200)), (2.5, (375, 250)), (1.35, (202, 135))]:
        out = upscaler(photo, factor)
        assert out.size == size
    # The model's own output follows the picture (not a grey field, not an empty one).
    out = np.asarray(upscaler(photo, 4).resize(photo.size)).astype(float).ravel()
    assert np.corrcoef(out, np.asarray(photo).astype(float).ravel())[0, 1] > 0.2


def test_tiles_give_the_whole_images_pixels_and_none_passes_its_bound(upscaler, photo, monkeypatch):
    whole = np.asarray(upscaler(photo, 4)).astype(int)
    shapes: list[tuple[int, ...]] = []
    hook = upscaler.model.model.register_forward_pre_hook(
        lambda _, args: shapes.append(tuple(args[0].shape))
    )
    monkeypatch.setattr(upscalers, "TILE", 40)
    try:
        tiled = np.asarray(upscaler(photo, 4)).astype(int)
    finally:
        hook.remove()
    assert len(shapes) == 4 * 3  # 150x100 in tiles of 40
    assert max(max(s[2:]) for s in shapes) <= 40 + 2 * upscalers.PAD
    assert np.abs(tiled - whole).max() <= 1  # rounding only: each tile saw its neighbours' edge
    monkeypatch.setattr(upscalers, "PAD", 0)
    seams = np.asarray(upscaler(photo, 4)).astype(int)
    assert np.abs(seams - whole).max() > 16  # without the pad the seams show: the test can fail


def test_an_output_over_the_pixel_limit_is_refused_naming_the_input():
    check_size((2048, 2048), 4)  # the largest generated size, 4x: exactly the limit
    assert 8192 * 8192 == MAX_UPSCALED_PIXELS
    with pytest.raises(ValueError, match=r"^upscale: 2100x2100 upscaled 4x is 8400x8400"):
        check_size((2100, 2100), 4)


def test_a_file_that_is_not_an_upscaler_is_refused_at_setup(tmp_path):
    (tmp_path / "upscaler").mkdir()
    save_file({"weight": torch.zeros(3, 3)}, tmp_path / "upscaler/other.safetensors")
    with pytest.raises(
        ValueError, match=r"other.safetensors: pinned as \[upscaler\], but spandrel knows no"
    ):
        Upscaler.load(tmp_path, torch.device("cpu"), torch.float32)


def test_a_build_without_an_upscaler_has_none(tmp_path):
    assert Upscaler.load(tmp_path, torch.device("cpu"), torch.float32) is None
