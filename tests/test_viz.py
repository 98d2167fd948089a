"""Each plot helper draws what it promises, on small inputs, and returns its axes or figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from flowlib import Compose, FlowInputError, FlowModel, StandardNormal
from flowlib.data.toys import get_toy
from flowlib.elementwise import Affine, SinhArcsinh
from flowlib.permutations import ReversePermutation
from flowlib.viz import (
    compare_densities,
    image_grid,
    plot_density_1d,
    plot_density_2d,
    plot_flow_steps,
    plot_samples_2d,
    plot_training_curve,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _model_2d() -> FlowModel:
    layer = Affine(2)
    with torch.no_grad():
        layer.log_scale.copy_(torch.tensor([0.3, -0.2]))
        layer.shift.copy_(torch.tensor([0.5, -0.5]))
    return FlowModel(Compose(layer, ReversePermutation(2), SinhArcsinh(2)), StandardNormal(2))


def test_plot_density_2d_draws_the_grid() -> None:
    ax = plot_density_2d(_model_2d(), bounds=6.0, resolution=40)
    assert isinstance(ax, Axes)
    (image,) = ax.images
    assert isinstance(image, AxesImage)
    values = image.get_array()
    assert values.shape == (40, 40) and np.isfinite(values).all() and values.max() > 0
    assert image.get_extent() == [-6.0, 6.0, -6.0, 6.0]
    # The density integrates to 1 over a box that holds it.
    assert abs(values.sum() * (12 / 40) ** 2 - 1) < 0.01


def test_plot_density_2d_on_a_toy_uses_its_box_and_log_scale() -> None:
    toy = get_toy("eight_gaussians")
    fig, ax = plt.subplots()
    out = plot_density_2d(toy, resolution=20, ax=ax, log=True, colorbar=True, title="log p")
    assert out is ax
    assert ax.images[0].get_extent() == [*toy.bounds, *toy.bounds]
    assert ax.get_title() == "log p"
    assert len(fig.axes) == 2  # the colour bar


def test_plot_density_2d_accepts_a_callable() -> None:
    ax = plot_density_2d(lambda x: -0.5 * (x * x).sum(1) - np.log(2 * np.pi), bounds=(-2, 2), resolution=10)
    assert ax.images[0].get_array().shape == (10, 10)


def test_plot_samples_2d() -> None:
    points = torch.randn(50, 2)
    ax = plot_samples_2d(points, bounds=3.0, title="samples")
    (collection,) = ax.collections
    assert isinstance(collection, PathCollection)
    assert np.allclose(collection.get_offsets(), points.numpy())
    assert ax.get_xlim() == (-3.0, 3.0)
    with pytest.raises(FlowInputError, match="shape"):
        plot_samples_2d(torch.randn(5))


def test_plot_density_1d_with_samples() -> None:
    model = FlowModel(SinhArcsinh(1), StandardNormal(1))
    ax = plot_density_1d(model, bounds=(-3, 3), resolution=51, samples=torch.randn(200), label="p_X")
    (line,) = ax.lines
    x, y = line.get_data()
    assert len(x) == 51 and (y > 0).all()
    assert np.isclose(y.max(), 1 / np.sqrt(2 * np.pi), rtol=1e-3)  # SinhArcsinh starts as the identity
    assert len(ax.patches) == 50  # the histogram's bars
    assert ax.get_legend() is not None


def test_plot_density_1d_accepts_a_torch_distribution() -> None:
    ax = plot_density_1d(torch.distributions.Normal(0.0, 2.0), bounds=(-4, 4), resolution=20)
    assert np.isclose(ax.lines[0].get_data()[1].max(), 1 / (2 * np.sqrt(2 * np.pi)), rtol=0.05)
    with pytest.raises(FlowInputError, match="lo < hi"):
        plot_density_1d(torch.distributions.Normal(0.0, 1.0), bounds=(1, -1))


def test_compare_densities_shares_a_scale() -> None:
    toy = get_toy("eight_gaussians")
    fig = compare_densities({"data": toy, "model": _model_2d()}, resolution=20,
                            samples={"model samples": torch.randn(30, 2)})
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes] == ["data", "model", "model samples"]
    first, second = (ax.images[0] for ax in fig.axes[:2])
    assert first.get_clim()[1] == second.get_clim()[1]
    assert len(fig.axes[2].collections) == 1
    with pytest.raises(FlowInputError):
        compare_densities({})


def test_plot_flow_steps_one_panel_per_layer() -> None:
    model = _model_2d()
    x = torch.randn(40, 2)
    fig = plot_flow_steps(model, x)
    drawn = [ax for ax in fig.axes if ax.collections]
    assert len(drawn) == len(model.flow) + 1
    assert drawn[0].get_title() == "x (data)" and "z (latent)" in drawn[-1].get_title()
    assert np.allclose(drawn[-1].collections[0].get_offsets(), model.flow(x)[0].detach().numpy(), atol=1e-5)
    fig = plot_flow_steps(model.flow, torch.randn(40, 2), direction="inverse", max_cols=2)
    assert sum(1 for ax in fig.axes if ax.collections) == len(model.flow) + 1
    with pytest.raises(FlowInputError, match="direction"):
        plot_flow_steps(model, x, direction="sideways")


@pytest.mark.parametrize("channels", [1, 3])
def test_image_grid(channels: int) -> None:
    images = torch.rand(10, channels, 4, 5)
    ax = image_grid(images, nrow=4, padding=1)
    (image,) = ax.images
    data = np.asarray(image.get_array())
    rows, cols = 3, 4
    assert data.shape[:2] == (rows * 5 + 1, cols * 6 + 1)
    if channels == 3:
        assert data.shape[2] == 3
    # The first tile sits right after the padding, unchanged (values already in [0, 1]).
    tile = data[1:5, 1:6] if channels == 1 else data[1:5, 1:6].transpose(2, 0, 1)
    assert np.allclose(tile, images[0, 0].numpy() if channels == 1 else images[0].numpy())
    with pytest.raises(FlowInputError, match="shape"):
        image_grid(torch.rand(2, 2, 4, 4))


def test_image_grid_rescales_values_outside_unit_range() -> None:
    ax = image_grid(torch.linspace(-1, 1, 2 * 3 * 3).reshape(2, 1, 3, 3), nrow=2)
    data = np.asarray(ax.images[0].get_array())
    assert data.min() == 0.0 and data.max() == 1.0


def test_plot_training_curve_from_a_fit_result_like_object() -> None:
    class Result:
        metric = "nll"
        losses = [3.0, 2.5, 2.2, 2.0, 1.9]
        val_steps = [2, 4]
        val = [2.6, 2.1]

    ax = plot_training_curve(Result(), smooth=2)
    labels = [line.get_label() for line in ax.lines]
    assert "validation" in labels and any(label.startswith("train") for label in labels)
    assert ax.get_ylabel() == "nll"
    val_line = ax.lines[labels.index("validation")]
    assert list(val_line.get_xdata()) == [2, 4]


def test_plot_training_curve_from_dicts_and_lists() -> None:
    ax = plot_training_curve({"losses": [1.0, 0.5], "val_steps": [2], "val": [0.6]})
    assert len(ax.lines) == 2
    ax = plot_training_curve({"nll": [1.0, 0.8, 0.7], "kl": [0.3, 0.2, 0.1]}, logy=True)
    assert [line.get_label() for line in ax.lines] == ["nll", "kl"] and ax.get_yscale() == "log"
    ax = plot_training_curve([2.0, 1.0, 0.5])
    assert list(ax.lines[0].get_ydata()) == [2.0, 1.0, 0.5]
    with pytest.raises(FlowInputError):
        plot_training_curve([])
