import numpy as np
import pytest
from PIL import Image, ImageDraw

from aml_model.scale import TARGET_DIAMETER, ZOOM_RANGE, normalise_scale, nucleus_diameter


def cell(size: int, radius: float, centre=(0.5, 0.5)) -> np.ndarray:
    """A dark purple disc (the nucleus) on a pale background, with pink red cells around."""
    image = Image.new("RGB", (size, size), (235, 225, 225))
    draw = ImageDraw.Draw(image)
    for x, y in ((0.12, 0.12), (0.85, 0.2), (0.2, 0.85)):
        draw.ellipse(
            [(x - 0.08) * size, (y - 0.08) * size, (x + 0.08) * size, (y + 0.08) * size],
            fill=(220, 170, 180),
        )
    cy, cx = centre[0] * size, centre[1] * size
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=(120, 60, 150))
    return np.asarray(image, np.float32)


def test_the_nucleus_is_measured_and_red_cells_are_not():
    diameter, centre = nucleus_diameter(cell(96, 20, (0.55, 0.45))[None, ..., 1])
    assert float(diameter[0]) == pytest.approx(40, rel=0.05)
    np.testing.assert_allclose(centre.numpy()[0], (0.55, 0.45), atol=0.01)


def test_the_same_cell_at_two_pixel_sizes_comes_out_the_same_size():
    small, large = (
        cell(96, 12),
        cell(96, 18),
    )  # as two labs 1.5x apart in microns per pixel would show it
    out = normalise_scale(np.stack([small, large]), green_offset=0.0)
    diameters, _ = nucleus_diameter(out[..., 1])
    np.testing.assert_allclose(diameters.numpy(), TARGET_DIAMETER * 96, rtol=0.08)


def test_the_zoom_is_clamped_and_never_shrinks():
    big, tiny = cell(96, 30), cell(96, 3)
    out = normalise_scale(np.stack([big, tiny]), green_offset=0.0).numpy()
    np.testing.assert_allclose(out[0], big, atol=1e-3)  # larger than the target: left as it is
    after, _ = nucleus_diameter(out[1:, ..., 1])
    assert float(after[0]) == pytest.approx(6 * ZOOM_RANGE[1], rel=0.15)
