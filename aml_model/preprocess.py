"""Decode single-cell image files into model-sized RGB uint8 arrays.

Pillow and numpy only: ingest workers decode without importing TensorFlow. The ResNet50
input normalisation, which needs Keras, is :func:`normalise_for_resnet50`.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from aml_model.config import PreprocessConfig
from aml_model.errors import ImageDecodeError

__all__ = [
    "SNIFF_BYTES",
    "SUPPORTED_FORMATS",
    "decode_cell",
    "normalise_for_resnet50",
    "sniff_image_format",
    "to_rgb_uint8",
]

logger = logging.getLogger(__name__)

#: Pillow format names accepted as cell images (MPO is how Pillow names some camera JPEGs).
SUPPORTED_FORMATS = frozenset({"TIFF", "PNG", "JPEG", "MPO", "BMP"})

# Smears are imaged on a light background: transparent pixels become white, not black.
_BACKGROUND = (255, 255, 255)


#: Bytes to read from a file to recognise an image format by its signature (DICOM's is at 128).
SNIFF_BYTES = 160


def sniff_image_format(head: bytes) -> str | None:
    """The image format whose signature ``head`` (a file's first bytes) starts with, or None.

    Pillow-free: names formats Pillow may not open (HEIC, AVIF, JPEG XL, DICOM) too, so that
    such a file is recognised as an image that cannot be used rather than taken for a note.
    """
    riff = head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    brand = head[8:12] if head[4:8] == b"ftyp" else b""
    signatures = (
        (head.startswith(b"\x89PNG\r\n\x1a\n"), "PNG"),
        (head.startswith(b"\xff\xd8\xff"), "JPEG"),
        (head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")), "TIFF"),
        (
            head.startswith(b"BM")
            and int.from_bytes(head[14:18], "little") in (12, 40, 52, 56, 64, 108, 124),
            "BMP",
        ),
        (head.startswith((b"GIF87a", b"GIF89a")), "GIF"),
        (riff, "WEBP"),
        (brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"), "HEIC"),
        (brand in (b"avif", b"avis"), "AVIF"),
        (head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")), "JPEG2000"),
        (head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")), "JPEG XL"),
        (head.startswith(b"8BPS"), "PSD"),
        (head[128:132] == b"DICM", "DICOM"),
    )
    return next((name for matched, name in signatures if matched), None)


def _describe_unidentified(data: bytes) -> str:
    sniffed = sniff_image_format(data[:SNIFF_BYTES])
    if sniffed is not None and sniffed not in SUPPORTED_FORMATS:
        return f"unsupported format {sniffed} (supported: {', '.join(sorted(SUPPORTED_FORMATS))})"
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<")):
        return "not an image: the file holds HTML/XML text"
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in data[:512])
    if printable == len(data[:512]):
        return "not an image: the file holds plain text"
    return "not a recognised image format"


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Map integer pixel values to 0..255 by the range of their bit depth, not the content."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        # Float images are taken as [0, 1] intensities, the convention of scientific TIFFs.
        return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    top = 65535 if array.max(initial=0) <= 65535 else np.iinfo(array.dtype).max
    return np.clip(np.rint(array.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """Convert a Pillow image of any supported mode to an RGB uint8 array.

    16-bit and 32-bit grey modes are scaled by their bit depth; modes with transparency
    are composited over a white background.

    Args:
        image: a loaded Pillow image (any mode Pillow reads from TIFF/PNG/JPEG/BMP).

    Returns:
        `(height, width, 3)` uint8 array.
    """
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        grey = _scale_to_uint8(np.asarray(image))
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        image = Image.alpha_composite(canvas, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def decode_cell(data: bytes, source: str, config: PreprocessConfig | None = None) -> np.ndarray:
    """Decode, validate and resize one cell image.

    Args:
        data: the file's bytes.
        source: the file's name or URI, used in error messages only.
        config: size and validation limits; the paper's defaults when omitted.

    Returns:
        `(image_size, image_size, 3)` uint8 RGB array, EXIF orientation applied.

    Raises:
        ImageDecodeError: empty, truncated, non-image, unsupported, oversized or degenerate
            input; ``reason`` says which.
    """
    config = config or PreprocessConfig()
    if not data:
        raise ImageDecodeError(source, "empty file (0 bytes)")
    try:
        # Pillow's DecompressionBombWarning stays a warning: config.max_pixels below is the rule,
        # and warnings.catch_warnings, which would turn it into an error, changes process-wide
        # state that the threads decoding a shard's cells share (tasks.ingest).
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError(source, _describe_unidentified(data)) from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(source, f"decompression bomb refused: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(source, f"unreadable image header: {exc}") from None

    if image.format not in SUPPORTED_FORMATS:
        supported = ", ".join(sorted(SUPPORTED_FORMATS))
        raise ImageDecodeError(
            source, f"unsupported format {image.format} (supported: {supported})"
        )
    width, height = image.size
    if min(width, height) < config.min_side:
        raise ImageDecodeError(
            source, f"image is {width}x{height} px, below the minimum side of {config.min_side} px"
        )
    if width * height > config.max_pixels:
        raise ImageDecodeError(
            source,
            f"decompression bomb refused: {width}x{height} px exceeds {config.max_pixels} pixels",
        )
    if max(width, height) / min(width, height) > config.max_aspect_ratio:
        raise ImageDecodeError(
            source,
            f"image is {width}x{height} px, aspect ratio above {config.max_aspect_ratio:g}",
        )
    size = (config.image_size, config.image_size)
    try:
        # JPEG only: libjpeg decodes at the smallest DCT scale (1/2, 1/4, 1/8) that still covers
        # the model size, which spares most of a large photo's decoding; at scale 1 (cells under
        # twice the model size) the pixels are exactly those of a full decode.
        image.draft("RGB", size)
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        # RGB images are resized by Pillow as they are; other modes go through to_rgb_uint8 first.
        rgb = image if image.mode == "RGB" else Image.fromarray(to_rgb_uint8(image))
        if rgb.size != size:
            rgb = rgb.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(source, f"truncated or corrupt image data: {exc}") from None


def normalise_for_resnet50(images):
    """Apply the ResNet50 ImageNet input normalisation (RGB->BGR, subtract channel means).

    Args:
        images: `(..., height, width, 3)` RGB values in 0..255 (numpy array or tensor).

    Returns:
        float32 array/tensor of the same shape, as ``keras.applications.resnet50`` expects.
    """
    from keras.applications import resnet50  # imported here so decoding needs no TensorFlow

    return resnet50.preprocess_input(images)
