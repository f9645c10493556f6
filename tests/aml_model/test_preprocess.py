import csv
import io

import numpy as np
import pytest
from PIL import Image

from aml_model.config import PreprocessConfig
from aml_model.errors import ImageDecodeError
from aml_model.preprocess import (
    SNIFF_BYTES,
    decode_cell,
    normalise_for_resnet50,
    sniff_image_format,
)

SMALL = PreprocessConfig(image_size=32)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient_rgb(width: int = 40, height: int = 40) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    y = np.linspace(0, 255, height, dtype=np.uint8)
    return np.stack(
        np.broadcast_arrays(x[None, :], y[:, None], np.full((height, width), 128, np.uint8)), -1
    )


def test_real_lmu_cells_decode_like_a_plain_pillow_reference(lmu_cells):
    with open(lmu_cells / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen = [r for r in rows if r["label"] == "blast"][:3] + [
        r for r in rows if r["label"] == "normal"
    ][:3]
    for row in chosen:
        path = lmu_cells / row["file"]
        cell = decode_cell(path.read_bytes(), str(path))
        assert cell.shape == (224, 224, 3) and cell.dtype == np.uint8
        with Image.open(path) as image:
            reference = np.asarray(
                image.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
            )
        np.testing.assert_array_equal(cell, reference)
        assert cell.std() > 10, "a real cell image is not flat"


def test_a_large_jpeg_is_decoded_at_a_reduced_dct_scale_close_to_a_full_decode(lmu_cells):
    # A cell photographed at 4x the LMU resolution: libjpeg decodes it at 1/4 scale (400 px), not
    # at 1600 px; the result stays within a few grey levels of a full decode resized the same way.
    path = next((lmu_cells / "MYO").glob("*.jpg"))
    with Image.open(path) as image:
        large = image.convert("RGB").resize((1600, 1600), Image.Resampling.BICUBIC)
    data = encode(large, "JPEG", quality=95)
    cell = decode_cell(data, "large.jpg")
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (224, 224))
        assert image.size == (400, 400), "the DCT scaling this test relies on"
    with Image.open(io.BytesIO(data)) as image:
        full = np.asarray(
            image.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
        ).astype(int)
    assert cell.shape == (224, 224, 3)
    assert np.abs(cell.astype(int) - full).mean() < 3


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP"])
def test_lossless_rgb_formats_keep_pixels(fmt):
    pixels = gradient_rgb(32, 32)
    cell = decode_cell(encode(Image.fromarray(pixels), fmt), f"x.{fmt.lower()}", SMALL)
    np.testing.assert_array_equal(cell, pixels)


def test_jpeg_is_decoded_and_resized():
    cell = decode_cell(
        encode(Image.fromarray(gradient_rgb(64, 48)), "JPEG", quality=95), "x.jpg", SMALL
    )
    assert cell.shape == (32, 32, 3)
    assert abs(int(cell[0, -1, 0]) - 255) < 12 and int(cell[0, 0, 0]) < 12


def test_grayscale_and_bilevel_become_three_equal_channels():
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    cell = decode_cell(encode(Image.fromarray(grey, "L"), "PNG"), "grey.png", SMALL)
    np.testing.assert_array_equal(cell, np.repeat(grey[..., None], 3, -1))
    bilevel = Image.fromarray(grey > 127).convert("1")
    cell = decode_cell(encode(bilevel, "PNG"), "bw.png", SMALL)
    assert set(np.unique(cell)) == {0, 255}


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_grey_is_scaled_by_bit_depth(fmt):
    values = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) % 256 * 257).astype(np.uint16)
    image = Image.fromarray(values)  # mode I;16
    assert image.mode.startswith("I;16")
    cell = decode_cell(encode(image, fmt), f"deep.{fmt.lower()}", SMALL)
    np.testing.assert_array_equal(cell[..., 0], (values // 257).astype(np.uint8))
    np.testing.assert_array_equal(cell[..., 0], cell[..., 2])


def test_rgba_is_composited_over_white():
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:16, :, 3] = 255  # top half opaque red, bottom half fully transparent
    cell = decode_cell(encode(Image.fromarray(rgba, "RGBA"), "PNG"), "alpha.png", SMALL)
    np.testing.assert_array_equal(cell[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(cell[-1, -1], [255, 255, 255])


def test_palette_with_and_without_transparency():
    palette_image = Image.fromarray(gradient_rgb(32, 32)).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=16
    )
    cell = decode_cell(encode(palette_image, "PNG"), "p.png", SMALL)
    np.testing.assert_array_equal(cell, np.asarray(palette_image.convert("RGB")))
    palette_image.info["transparency"] = 0
    transparent_index = np.asarray(palette_image) == 0
    cell = decode_cell(encode(palette_image, "PNG", transparency=0), "pt.png", SMALL)
    assert transparent_index.any()
    assert (cell[transparent_index] == 255).all()


def test_cmyk_jpeg_is_converted_to_rgb():
    cmyk = Image.fromarray(gradient_rgb(32, 32)).convert("CMYK")
    cell = decode_cell(encode(cmyk, "JPEG", quality=95), "cmyk.jpg", SMALL)
    assert cell.shape == (32, 32, 3) and cell.dtype == np.uint8


def test_exif_orientation_is_applied():
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = [255, 0, 0]  # left half red, right half blue
    pixels[:, 20:] = [0, 0, 255]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(Image.fromarray(pixels), "JPEG", quality=100, exif=exif.tobytes())
    cell = decode_cell(data, "rotated.jpg", PreprocessConfig(image_size=40))
    # After the 90 degree clockwise turn the red half is on top.
    assert cell[2, 20, 0] > 200 and cell[2, 20, 2] < 60
    assert cell[-3, 20, 2] > 200 and cell[-3, 20, 0] < 60


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty file"),
        (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "HTML"),
        (b"patient_id,diagnosis\nP1,aml\n", "plain text"),
        (bytes(range(256)) * 4, "not a recognised image format"),
    ],
)
def test_non_images_are_refused_with_a_reason(data, match):
    with pytest.raises(ImageDecodeError, match=match) as caught:
        decode_cell(data, "cells/bad.jpg", SMALL)
    assert caught.value.source == "cells/bad.jpg"
    assert str(caught.value).startswith("cells/bad.jpg: ")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_refused(fmt):
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), fmt)
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode_cell(data[: len(data) // 2], f"half.{fmt.lower()}", SMALL)


def test_unsupported_format_is_named():
    data = encode(Image.fromarray(gradient_rgb(32, 32)), "GIF")
    with pytest.raises(ImageDecodeError, match="unsupported format GIF"):
        decode_cell(data, "x.gif", SMALL)
    # A format Pillow cannot even open is named from its signature.
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
    with pytest.raises(ImageDecodeError, match=r"unsupported format HEIC \(supported: BMP, JPEG"):
        decode_cell(heic, "x.heic", SMALL)


def test_image_formats_are_recognised_by_their_first_bytes():
    image = Image.fromarray(gradient_rgb(32, 32))
    for fmt in ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP"):
        assert sniff_image_format(encode(image, fmt)[:SNIFF_BYTES]) == fmt
    assert sniff_image_format(b"\x00\x00\x00\x18ftypheic") == "HEIC"
    assert sniff_image_format(bytes(128) + b"DICM") == "DICOM"
    for text in (b"", b"cell count 200\n", b"BMI notes: 22", b"<html></html>", b"\0\0\0\1Bud1"):
        assert sniff_image_format(text) is None, text


def test_degenerate_sizes_are_refused():
    with pytest.raises(ImageDecodeError, match="below the minimum side"):
        decode_cell(encode(Image.new("RGB", (4, 40)), "PNG"), "thin.png", SMALL)
    with pytest.raises(ImageDecodeError, match="aspect ratio"):
        decode_cell(encode(Image.new("RGB", (400, 20)), "PNG"), "strip.png", SMALL)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encode(Image.new("1", (8000, 6000)), "PNG")  # 48 Mpx in a few kB
    assert len(bomb) < 100_000
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_cell(bomb, "bomb.png", SMALL)


def test_resnet50_normalisation_flips_channels_and_subtracts_imagenet_means():
    pixel = np.array([[[[10, 20, 30]]]], np.uint8)
    out = np.asarray(normalise_for_resnet50(pixel.astype(np.float32)))
    np.testing.assert_allclose(out[0, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], atol=1e-4)
