import io

import pytest
from PIL import Image

from sdcog.request.images import encode_image, extension, output_size, read_image, snap


def test_snap_to_multiples_of_64_in_range():
    assert snap(500) == 512
    assert snap(10) == 128
    assert snap(5000) == 2048


def test_size_without_image_is_native_unless_given():
    assert output_size(None, None, 512, None) == (512, 512)
    assert output_size(640, None, 768, None) == (640, 768)
    assert output_size(640, 384, 512, None) == (640, 384)


def test_size_with_image_follows_its_aspect_at_native_pixels():
    image = Image.new("RGB", (300, 200))
    assert output_size(None, None, 512, image) == (640, 448)
    assert output_size(None, None, 768, image) == (960, 640)
    assert output_size(768, None, 512, image) == (768, 512)
    assert output_size(None, 256, 512, image) == (384, 256)
    assert output_size(256, 256, 512, image) == (256, 256)


def test_read_image_converts_and_names_the_input_on_error(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGBA", (10, 20)).save(good)
    assert read_image(good, "image").mode == "RGB"
    assert read_image(good, "mask", mode="L").mode == "L"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="mask: could not be read as an image"):
        read_image(bad, "mask")


def test_read_image_applies_exif_orientation(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    Image.new("RGB", (40, 20)).save(path, exif=exif)
    assert read_image(path, "image").size == (20, 40)


@pytest.mark.parametrize(
    ("fmt", "ext", "pil"), [("png", "png", "PNG"), ("jpg", "jpg", "JPEG"), ("webp", "webp", "WEBP")]
)
def test_output_formats(fmt, ext, pil):
    data = encode_image(Image.new("RGB", (64, 64), (9, 9, 9)), fmt, 90)
    assert extension(fmt) == ext
    assert Image.open(io.BytesIO(data)).format == pil


def test_quality_changes_lossy_size():
    image = Image.effect_noise((128, 128), 64).convert("RGB")
    assert len(encode_image(image, "jpg", 10)) < len(encode_image(image, "jpg", 95))


def png_compression_level(data: bytes) -> int:
    """zlib's FLEVEL of the first IDAT chunk: 0 is its fastest setting, 2 the default."""
    start = data.index(b"IDAT") + 4
    return data[start + 1] >> 6


def test_png_is_lossless_with_the_fast_zlib_setting():
    image = Image.effect_noise((128, 128), 64).convert("RGB")
    data = encode_image(image, "png", 80)
    assert png_compression_level(data) == 0
    assert Image.open(io.BytesIO(data)).tobytes() == image.tobytes()
