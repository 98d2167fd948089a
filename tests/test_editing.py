"""flowlib.editing: attributes of drawn shapes with known answers; directions, edits, scales on a flow."""

from __future__ import annotations

import pytest
import torch

from flowlib import FlowInputError
from flowlib.data import load_digits
from flowlib.editing import attribute_direction, edit, resample_scale, slant, stroke_thickness
from flowlib.image_models import glow_image
from flowlib.models import nsf
from flowlib.train import fit


def bar(width: int, shear: float = 0.0, size: int = 24, length: int = 16) -> torch.Tensor:
    """A vertical bar, ``width`` pixels by ``length`` rows, columns shifted by shear * (centre - row)."""
    img = torch.zeros(1, 1, size, size)
    top = (size - length) // 2
    centre = top + (length - 1) / 2
    for r in range(top, top + length):
        c = round(size / 2 - width / 2 + shear * (centre - r))
        img[0, 0, r, c:c + width] = 255
    return img


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_thickness_of_bars(width):
    expected = width * 16 / (width + 16)  # 2 A / P for a w x 16 bar
    assert float(stroke_thickness(bar(width))) == pytest.approx(expected)


def test_thickness_grows_with_the_pen_and_slant_reads_the_shear():
    widths = torch.cat([bar(w) for w in (1, 2, 3, 5)])
    assert (stroke_thickness(widths).diff() > 0).all()
    for shear in (-0.4, 0.0, 0.3, 0.6):
        assert float(slant(bar(2, shear))) == pytest.approx(shear, abs=0.03)
    assert float(slant(bar(2, 0.5).flip(-1))) == pytest.approx(-0.5, abs=0.03)  # a mirror leans left
    assert stroke_thickness(torch.zeros(2, 8, 8)).tolist() == [0.0, 0.0]  # no ink, no stroke
    with pytest.raises(FlowInputError, match="expected images"):
        slant(torch.zeros(5))


def test_direction_edit_and_scales_on_a_small_flow():
    torch.manual_seed(0)
    x, _ = load_digits("train")
    model = glow_image((1, 8, 8), hidden=16, blocks=1, grey_levels=17)
    fit(model, x.float(), steps=150, batch_size=64, lr=3e-3, progress=False)
    thick = stroke_thickness(x)
    d = attribute_direction(model, x, thick > thick.median())
    assert d.shape == (1, 8, 8) and d.norm() > 0
    out = edit(model, x[:64], d, [-1.0, 0.0, 1.0])
    assert out.shape == (3, 64, 1, 8, 8) and float(out.min()) >= 0 and float(out.max()) <= 1
    # Along +d the strokes thicken, along -d they thin, on average over the batch.
    t = stroke_thickness(out.reshape(-1, 1, 8, 8)).reshape(3, 64).mean(1)
    assert t[0] < t[1] < t[2]
    # alpha = 0 reproduces the image (the bin centres it was given).
    torch.testing.assert_close(out[1].double(), ((x[:64].double() + 0.5) / 17), atol=1e-4, rtol=0)
    fine, coarse = resample_scale(model, x[:64], 0), resample_scale(model, x[:64], 1)
    assert (fine - out[1]).abs().mean() < (coarse - out[1]).abs().mean()
    same = resample_scale(model, x[:4], 1, temperature=0.5, generator=torch.Generator().manual_seed(3))
    again = resample_scale(model, x[:4], 1, temperature=0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(same, again)
    with pytest.raises(FlowInputError, match="0..1"):
        resample_scale(model, x[:4], 2)
    with pytest.raises(FlowInputError, match="both groups"):
        attribute_direction(model, x[:10], torch.ones(10, dtype=torch.bool))
    with pytest.raises(FlowInputError, match="MultiScale"):
        resample_scale(nsf(2, layers=1, hidden=4), x[:2], 0)
