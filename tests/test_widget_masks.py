"""The masks-and-squeeze widget of lecture 4: what it shows is the coupling's own Jacobian.

Driven without a browser: set its controls, read what its picture shows (the colour code of every
pixel, the numbers of the squeezed tiles) and compare with an autograd Jacobian computed here,
with the mask written out by hand, and with the squeeze's index formula.
"""

from __future__ import annotations

import ipywidgets as W
import numpy as np
import pytest
import torch

from flowlib._checks import FlowInputError
from flowlib.multiscale import squeeze, unsqueeze
from flowlib.widgets import MasksAndSqueeze
from flowlib.widgets.canvas import MAX_WIDTH_PX
from flowlib.widgets.masks import CONDITIONERS, MASKS, PALETTE


@pytest.fixture(scope="module")
def widget() -> MasksAndSqueeze:
    return MasksAndSqueeze(size=8)


def _set(w: MasksAndSqueeze, mask: str, conditioner: str, pixel: tuple[int, int]) -> None:
    with w.hold_updates():
        w.controls["mask"].value = mask
        w.controls["conditioner"].value = conditioner
        w.controls["row"].value, w.controls["column"].value = pixel


def _mask_by_hand(name: str, s: int) -> np.ndarray:
    """The kept pixels in image coordinates, from the definitions (not from flowlib)."""
    r, c = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    return {"checkerboard": (r + c) % 2 == 0,
            "checkerboard, complement": (r + c) % 2 == 1,
            # after the squeeze, channel 2i + j holds pixel (i, j) = (r % 2, c % 2) of each block;
            # the channel mask keeps channels 0 and 1 (parity 0) or 2 and 3 (parity 1)
            "squeeze, then channel": r % 2 == 0,
            "squeeze, then channel, complement": r % 2 == 1,
            # the checkerboard of the squeezed (s/2 x s/2) grid: the block (r // 2, c // 2) decides
            "squeeze, then checkerboard": (r // 2 + c // 2) % 2 == 0}[name]


def _jacobian_here(w: MasksAndSqueeze) -> torch.Tensor:
    """dz/dx in image coordinates, by autograd through the widget's flowlib layer (written out again)."""
    layer, squeezed = w.layer, MASKS[w.controls["mask"].value][0]

    def f(x: torch.Tensor) -> torch.Tensor:
        return unsqueeze(layer(squeeze(x))[0]) if squeezed else layer(x)[0]

    x = torch.randn(1, 1, w.size, w.size, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    n = w.size * w.size
    return torch.autograd.functional.jacobian(f, x).reshape(n, n)


def test_builds(widget: MasksAndSqueeze) -> None:
    assert widget.image_bytes().startswith(b"\x89PNG")
    assert isinstance(widget.widget, W.Widget)
    assert set(widget.controls) == {"mask", "conditioner", "row", "column"}
    assert widget.status


@pytest.mark.parametrize("key, value", [("row", 6), ("column", 1), ("mask", "squeeze, then channel"),
                                        ("conditioner", "conv")])
def test_every_control_moves_the_picture(widget: MasksAndSqueeze, key: str, value: object) -> None:
    _set(widget, "checkerboard", "dense", (3, 4))  # (3 + 4) odd: a transformed pixel
    before, cats = widget.image_bytes(), widget.categories.copy()
    widget.controls[key].value = value
    assert widget.image_bytes() != before, key
    assert not np.array_equal(cats, widget.categories), key


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("conditioner", list(CONDITIONERS))
def test_the_dependence_shown_is_the_jacobians(widget: MasksAndSqueeze, mask: str, conditioner: str) -> None:
    """Colours = mask (by hand) x non-zeros of the Jacobian's row (autograd, here), for every pixel."""
    s = widget.size
    _set(widget, mask, conditioner, (0, 0))
    kept = _mask_by_hand(mask, s)
    assert np.array_equal(widget.kept_image(), kept)
    depends = (_jacobian_here(widget) != 0).numpy()  # row p: the inputs of z_p
    assert np.array_equal(widget.jacobian() != 0, depends)
    flat = kept.reshape(-1)
    for p in range(s * s):
        # the structure: a kept pixel depends on itself alone, a transformed one on itself and kept pixels
        others = np.arange(s * s) != p
        assert depends[p, p] and not (depends[p] & ~flat & others).any(), (mask, conditioner, p)
        if flat[p]:
            assert depends[p].sum() == 1
        elif conditioner == "dense":
            assert depends[p][flat].all(), "a dense conditioner reads every kept pixel"
    # what is drawn, for a few pixels (each one an update of the picture)
    for p in (0, 9, 26, 37, s * s - 1):
        widget.select(p // s, p % s)
        row = depends[p].reshape(s, s)
        assert np.array_equal(widget.depends_on(), row)
        assert np.array_equal(widget.categories, np.where(kept, np.where(row, 1, 0), np.where(row, 3, 2)))


def test_conv_conditioner_reaches_two_pixels(widget: MasksAndSqueeze) -> None:
    _set(widget, "checkerboard", "conv", (3, 4))  # (3 + 4) odd: transformed
    r, c = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    near = (np.abs(r - 3) <= 2) & (np.abs(c - 4) <= 2)
    itself = (r == 3) & (c == 4)
    assert np.array_equal(widget.depends_on(), (near & _mask_by_hand("checkerboard", 8)) | itself)


def test_the_picture_shows_the_categories(widget: MasksAndSqueeze) -> None:
    """The drawn pixels at each cell centre carry the palette colour of that cell's category."""
    from matplotlib.colors import to_rgb

    _set(widget, "squeeze, then channel", "dense", (3, 2))
    cell = widget._cell
    picture = np.asarray(widget._image_x.get_array())
    for r in range(8):
        for c in range(8):
            # a corner of the cell, away from its number and from the grid lines
            rgb = picture[r * cell + 3, c * cell + 3] / 255
            assert np.allclose(rgb, to_rgb(PALETTE[int(widget.categories[r, c])]), atol=0.01), (r, c)


def test_the_squeeze_panel_follows_the_index_formula(widget: MasksAndSqueeze) -> None:
    """Pixel (r, c) goes to channel 2 (r % 2) + (c % 2), at (r // 2, c // 2)."""
    s = widget.size
    for r in range(s):
        for c in range(s):
            assert widget.channel_of(r, c) == (2 * (r % 2) + c % 2, r // 2, c // 2)
            k, i, j = widget.channel_of(r, c)
            assert int(widget.squeezed_index[k, i, j]) == r * s + c


def test_status_counts(widget: MasksAndSqueeze) -> None:
    _set(widget, "checkerboard, complement", "dense", (0, 0))  # (0 + 0) even: transformed by the complement
    assert "transformed" in widget.status and "32 of the 32 kept pixels" in widget.status
    widget.select(0, 1)
    assert "kept" in widget.status and "x_p alone" in widget.status


@pytest.mark.parametrize("size", [4, 6, 16])
def test_other_sizes(size: int) -> None:
    w = MasksAndSqueeze(size=size, mask="squeeze, then channel", pixel=(1, 0))
    assert np.array_equal(w.kept_image(), _mask_by_hand("squeeze, then channel", size))
    assert w.depends_on().sum() == size * size // 2 + 1  # transformed, dense: all kept pixels and itself
    width, _ = w.figure.canvas.get_width_height()
    assert width <= MAX_WIDTH_PX


@pytest.mark.parametrize("kwargs, said", [
    ({"size": 7}, "size must be even"), ({"size": 2}, "size"), ({"size": 18}, "at most 16"),
    ({"size": 8.0}, "size"), ({"mask": "stripes"}, "mask must be one of"),
    ({"conditioner": "mlp"}, "conditioner must be one of"), ({"pixel": (8, 0)}, "pixel must be a pair"),
    ({"pixel": 3}, "pixel must be a pair"), ({"pixel": (-1, 2)}, "pixel")])
def test_bad_arguments_are_refused_clearly(kwargs: dict, said: str) -> None:
    with pytest.raises(FlowInputError, match=said):
        MasksAndSqueeze(**kwargs)


def test_bad_pixel_in_select(widget: MasksAndSqueeze) -> None:
    with pytest.raises(FlowInputError, match="MasksAndSqueeze.select: pixel must be a pair"):
        widget.select(0, 9)


def test_the_first_slider_changes_the_picture(widget: MasksAndSqueeze) -> None:
    """The slider a browser test moves first (the width's fit in the column: tests/test_widgets.py)."""
    rows = widget.widget.children[1:-1]
    first = next(c for r in rows for c in r.children if isinstance(c, W.IntSlider))
    before = widget.image_bytes()
    first.value = (first.value + 2) % (first.max + 1)
    assert widget.image_bytes() != before
