"""The shear widget of lecture 3 (flowlib.widgets.ShearAndScale2D), driven without a browser.

It must build, redraw on every control, keep the measured area under any shear (det = 1),
multiply it by exp(s_1 + s_2) under the scaling layer, refuse bad arguments by name, and fit
the notebook column like every other widget.
"""

from __future__ import annotations

import itertools
import math

import ipywidgets as W
import numpy as np
import pytest
import torch

from flowlib.core import FlowInputError
from flowlib.widgets import ShearAndScale2D
from flowlib.widgets.shear import SHAPES, SHEAR_SLIDERS, shoelace_area


@pytest.fixture(scope="module")
def shear() -> ShearAndScale2D:
    return ShearAndScale2D(n_points=200, boundary_points=2000)


def _reset(widget: ShearAndScale2D, **values: object) -> None:
    settings: dict[str, object] = {"shape": "square", "scaling": False}
    settings.update({key: spec[4] for key, spec in SHEAR_SLIDERS.items()})
    settings.update(values)
    with widget.hold_updates():
        for key, value in settings.items():
            widget.controls[key].value = value


def test_builds_and_reports(shear: ShearAndScale2D) -> None:
    _reset(shear)
    assert shear.image_bytes().startswith(b"\x89PNG")
    assert isinstance(shear.widget, W.Widget)
    assert set(shear.controls) == {"shape", "scaling", *SHEAR_SLIDERS}
    assert abs(shear.area_before - 4.0) < 1e-9 and abs(shear.area_after - 4.0) < 1e-6
    assert shear.det_range == (1.0, 1.0)
    assert "area of its image z = f(x): 4.0000" in shear.status


def _picture(widget: ShearAndScale2D) -> tuple[bytes, np.ndarray]:
    z = widget._artists["z"][0].get_xy().copy()
    return widget.image_bytes(), z


@pytest.mark.parametrize("key", ["shape", "scaling", *SHEAR_SLIDERS])
def test_every_control_moves_the_picture(shear: ShearAndScale2D, key: str) -> None:
    # The scales act only while the scaling layer is on; switching it on with s = 0 changes
    # nothing, so that test starts from s != 0.
    _reset(shear, scaling=key in ("s1", "s2", "scaling"), s1=0.3 if key == "scaling" else 0.0)
    if key == "scaling":
        shear.controls["scaling"].value = False
    png, z = _picture(shear)
    control = shear.controls[key]
    if key == "shape":
        control.value = "disc"
    elif key == "scaling":
        control.value = True
    else:
        control.value = control.value + 0.5 if control.value + 0.5 <= control.max else control.value - 0.5
    png_after, z_after = _picture(shear)
    assert png_after != png, key
    assert z.shape != z_after.shape or not np.allclose(z, z_after), key


@pytest.mark.parametrize("shape", list(SHAPES))
def test_shear_keeps_the_area(shear: ShearAndScale2D, shape: str) -> None:
    """Every corner of (a, b, c): the image has the area of the shape, and det = 1 at every point."""
    _reset(shear, shape=shape)
    exact = SHAPES[shape]
    assert abs(shear.area_before - exact) < 1e-5 * exact
    for corner in itertools.product(*[(0, 1)] * 3):
        with shear.hold_updates():
            for key, end in zip("abc", corner, strict=True):
                control = shear.controls[key]
                shear.controls[key].value = (control.min, control.max)[end]
        assert abs(shear.area_after - shear.area_before) < 1e-4 * exact, (corner, shear.status)
        assert shear.det_range == (1.0, 1.0), corner


@pytest.mark.parametrize("shape", list(SHAPES))
def test_scaling_multiplies_the_area_by_exp_sum_s(shear: ShearAndScale2D, shape: str) -> None:
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        a, b, c, s1, s2 = (2 * torch.rand(5, generator=g) - 1).tolist()
        _reset(shear, shape=shape, scaling=True, a=round(2 * a, 2), b=round(1.5 * b, 2),
               c=round(2 + 2 * c, 1), s1=round(s1, 2), s2=round(s2, 2))
        factor = math.exp(round(s1, 2) + round(s2, 2))
        assert abs(shear.scale_factor - factor) < 1e-12
        expected = factor * shear.area_before
        assert abs(shear.area_after - expected) < 1e-4 * expected, shear.status
        lo, hi = shear.det_range
        assert abs(lo - factor) < 1e-9 and abs(hi - factor) < 1e-9
    # The scales do nothing while the layer is off.
    shear.controls["scaling"].value = False
    assert abs(shear.area_after - shear.area_before) < 1e-4 * shear.area_before


def test_transform_is_the_map_shown(shear: ShearAndScale2D) -> None:
    """transform(x) = (e^{s1} x_1, e^{s2} (x_2 + a x_1 + b sin(c x_1))), log-det s_1 + s_2."""
    _reset(shear, scaling=True, a=1.0, b=0.5, c=2.0, s1=0.2, s2=-0.4)
    x = torch.tensor([[0.3, -0.7], [1.0, 1.0]], dtype=torch.float64)
    z, logdet = shear.transform(x)
    t = 1.0 * x[:, 0] + 0.5 * torch.sin(2.0 * x[:, 0])
    expected = torch.stack([math.exp(0.2) * x[:, 0], math.exp(-0.4) * (x[:, 1] + t)], 1)
    assert torch.allclose(z, expected, atol=1e-12)
    assert torch.allclose(logdet, torch.full((2,), -0.2, dtype=torch.float64), atol=1e-12)
    jac = torch.autograd.functional.jacobian(lambda v: shear.transform(v.unsqueeze(0))[0][0], x[0])
    assert abs(float(torch.linalg.det(jac)) - math.exp(-0.2)) < 1e-12


def test_shoelace_area() -> None:
    square = torch.tensor([[0.0, 0.0], [2.0, 0.0], [2.0, 3.0], [0.0, 3.0]])
    assert shoelace_area(square) == 6.0
    assert shoelace_area(square.flip(0)) == 6.0  # either orientation
    with pytest.raises(FlowInputError, match="vertices"):
        shoelace_area(torch.zeros(2, 2))


@pytest.mark.parametrize("kwargs, match", [
    ({"shape": "triangle"}, "shape"),
    ({"a": 5.0}, "a must be a number"),
    ({"s1": float("nan")}, "s1 must be a finite number"),
    ({"c": "2"}, "c must be a real number"),
    ({"scaling": 1}, "scaling must be True or False"),
    ({"n_points": 0}, "n_points"),
    ({"boundary_points": 8}, "boundary_points"),
    ({"slope": 1.0}, "unknown keyword"),
    ({"image_format": "gif"}, "image_format"),
])
def test_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(FlowInputError, match=match):
        ShearAndScale2D(**kwargs)
    with pytest.raises(FlowInputError, match=r"\(n, 2\)"):
        ShearAndScale2D(n_points=10, boundary_points=100).transform(torch.zeros(3, 3))


def test_scales_hidden_without_the_scaling_layer(shear: ShearAndScale2D) -> None:
    _reset(shear, scaling=False)
    assert shear.controls["s1"].layout.display == "none" and shear.controls["s2"].layout.display == "none"
    shear.controls["scaling"].value = True
    assert shear.controls["s1"].layout.display is None
