"""Decode the path between the latents of two real images, under a slider (lecture 5)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import ipywidgets as W
import numpy as np
import torch
from matplotlib.patches import Rectangle
from torch import Tensor, nn

from flowlib._checks import FlowInputError, choice, fraction, integer
from flowlib._modules import evaluating, placement
from flowlib.viz import tile_images
from flowlib.widgets._images import grey_levels, image_model
from flowlib.widgets.canvas import Canvas, row, slider

__all__ = ["LatentInterpolation"]


class LatentInterpolation(Canvas):
    """Decode the path between the latents of two real images.

        z_a = f(x_a),  z_b = f(x_b),   x(alpha) = f^{-1}((1 - alpha) z_a + alpha z_b)

    ("linear"; Kingma & Dhariwal, 2018, figure 5), or along the great circle between z_a
    and z_b ("spherical", slerp), which keeps |z| near that of the ends instead of shrinking
    it towards the mode halfway. A flow is invertible, so x(0) = x_a and x(1) = x_b exactly
    (up to float error): the ends are the real images, not reconstructions.

    ``x_a`` and ``x_b`` are single images (C, H, W) or (1, C, H, W): grey levels as the data
    sets return them (integers 0..K-1, shown at the centre of their bin, (k + 1/2) / K), or
    floats in [0, 1]. Controls: ``alpha`` in [0, 1] and ``path``. On display: ``image``
    (C, H, W) at the current alpha, ``strip`` (frames, C, H, W) at ``frames`` equally spaced
    alphas (``steps=`` is the old, deprecated name of ``frames``). The widget uses only the
    model's ``encode`` and ``decode``, in eval mode without gradients, and changes nothing in it.
    """

    PATHS = ("linear", "spherical")

    def __init__(self, model: nn.Module, x_a: Tensor, x_b: Tensor, frames: int = 9, alpha: float = 0.5,
                 path: str = "linear", value_range: tuple[float, float] = (0.0, 1.0), size: float = 7.0,
                 dpi: int = 80, threads: int = 1, *, steps: int | None = None) -> None:
        who = "LatentInterpolation"
        self.event_shape = image_model(model, who)
        if steps is not None:  # the old name: `steps` now means optimiser steps only
            warnings.warn(f"{who}(steps=...) is deprecated, use frames=... (the frames of the strip)",
                          DeprecationWarning, stacklevel=2)
            frames = steps
        self.frames = integer(frames, "frames", who, minimum=2)
        choice(path, "path", self.PATHS, who)
        alpha = fraction(alpha, "alpha", who)
        self.model = model
        self.value_range = value_range
        self.x_a = self._to_unit(x_a, "x_a")
        self.x_b = self._to_unit(x_b, "x_b")
        with evaluating(model):
            self.z_a = model.encode(self.x_a)
            self.z_b = model.encode(self.x_b)
        self.alphas = torch.linspace(0, 1, self.frames).tolist()
        self._strips: dict[str, Tensor] = {}

        c, h, w = self.event_shape
        strip0 = tile_images(torch.zeros(self.frames, c, h, w), self.frames)
        width = size
        height = width / strip0.shape[1] * strip0.shape[0] + width / 3 + 0.6
        super().__init__((width, height), dpi=dpi, threads=threads)
        top = self.figure.add_gridspec(1, 3, left=0.1, right=0.9, top=0.9, bottom=0.32, wspace=0.15)
        axes = [self.figure.add_subplot(top[0, k]) for k in range(3)]
        ax_strip = self.figure.add_axes((0.01, 0.02, 0.98, 0.2))
        for ax in (*axes, ax_strip):
            ax.set_axis_off()
        cmap = "gray" if c == 1 else None
        axes[0].imshow(self._display(self.x_a[0]), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        axes[0].set_title("$x_a$ (alpha = 0)", fontsize=10)
        axes[2].imshow(self._display(self.x_b[0]), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        axes[2].set_title("$x_b$ (alpha = 1)", fontsize=10)
        self._current = axes[1].imshow(self._display(self.x_a[0]), cmap=cmap, vmin=0, vmax=1,
                                       interpolation="nearest")
        self._label = axes[1].text(0.5, 1.02, "", transform=axes[1].transAxes, ha="center", va="bottom",
                                   fontsize=10)
        self._strip_artist = ax_strip.imshow(strip0, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        # A red frame on the strip around the tile nearest to alpha, drawn through the centres of
        # the 1-pixel padding that surrounds each tile.
        self._marker = Rectangle((0, 0), w + 1, h + 1, fill=False, edgecolor="C3", linewidth=2)
        ax_strip.add_patch(self._marker)
        self._animate(self._current, self._label, self._strip_artist, self._marker)

        self.controls: dict[str, W.ValueWidget] = {
            "alpha": slider(alpha, 0.0, 1.0, 0.01, "alpha"),
            "path": W.ToggleButtons(options=list(self.PATHS), value=path, description="path",
                                    style={"button_width": "90px"}),
        }
        self.image: Tensor = self.x_a[0].cpu()
        self.strip: Tensor = torch.zeros(self.frames, c, h, w)
        self._watch_controls()
        self.update()

    # -- inputs ------------------------------------------------------------------------------
    def _to_unit(self, x: Tensor, name: str) -> Tensor:
        """One image as the flow's input in [0, 1], shape (1, C, H, W), on the model's device."""
        who = f"LatentInterpolation: {name}"
        if not isinstance(x, Tensor):
            raise FlowInputError(f"{who}: expected a torch.Tensor image, got {type(x).__name__}")
        x = x.unsqueeze(0) if x.dim() == 3 else x
        if x.dim() != 4 or x.shape[0] != 1 or tuple(x.shape[1:]) != self.event_shape:
            want = "(" + ", ".join(map(str, self.event_shape)) + ")"
            raise FlowInputError(f"{who}: expected one image of shape {want} or (1, {want[1:]}, "
                                 f"got {tuple(x.shape)}")
        device, dtype = placement(self.model)
        x = x.detach().to(device)
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):  # else an all-NaN strip
            raise FlowInputError(f"{who}: expected a finite image, found {int(torch.isnan(x).sum())} NaN and "
                                 f"{int(torch.isinf(x).sum())} inf pixels")
        levels = grey_levels(self.model)
        if not x.is_floating_point() or (levels is not None and float(x.max()) > 1):
            if levels is None:
                raise FlowInputError(f"{who}: integer grey levels need a model with .grey_levels; "
                                     f"pass floats in [0, 1] instead")
            from flowlib.dequantize import as_levels

            k = as_levels(x, levels, who)
            return ((k + 0.5) / levels).to(dtype)
        if float(x.min()) < 0 or float(x.max()) > 1:
            raise FlowInputError(f"{who}: expected floats in [0, 1] or integer grey levels, got values in "
                                 f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
        return x.to(dtype)

    def _display(self, image: Tensor) -> np.ndarray:
        arr = tile_images(image.unsqueeze(0), 1, padding=0, value_range=self.value_range)
        return arr

    # -- the computation -------------------------------------------------------------------
    def latents(self, alphas: Sequence[float] | Tensor, path: str = "linear") -> Tensor:
        """z(alpha) for each alpha: (len(alphas), C, H, W)."""
        a = torch.as_tensor(alphas, dtype=self.z_a.dtype, device=self.z_a.device).reshape(-1, 1, 1, 1)
        if path == "linear":
            return (1 - a) * self.z_a + a * self.z_b
        # slerp: sin((1-a) theta)/sin(theta) z_a + sin(a theta)/sin(theta) z_b, theta the angle between them.
        za, zb = self.z_a.flatten(), self.z_b.flatten()
        cos = torch.dot(za, zb) / (za.norm() * zb.norm()).clamp_min(1e-12)
        theta = torch.arccos(cos.clamp(-1, 1))
        if float(theta) < 1e-4:  # (almost) parallel: the great circle is the straight line
            return (1 - a) * self.z_a + a * self.z_b
        return (torch.sin((1 - a) * theta) * self.z_a + torch.sin(a * theta) * self.z_b) / torch.sin(theta)

    def decode(self, alphas: Sequence[float] | Tensor, path: str = "linear") -> Tensor:
        """x(alpha) = f^{-1}(z(alpha)) for each alpha, (len(alphas), C, H, W) on the CPU, clamped."""
        choice(path, "path", self.PATHS, "LatentInterpolation.decode")
        with evaluating(self.model):
            x = self.model.decode(self.latents(alphas, path))
        return x.detach().to("cpu", torch.float32).clamp(*self.value_range)

    @property
    def alpha(self) -> float:
        return float(self.controls["alpha"].value)

    def _compute(self) -> None:
        path = self.controls["path"].value
        if path not in self._strips:
            self._strips[path] = self.decode(self.alphas, path)
        self.strip = self._strips[path]
        alpha = self.alpha
        self.image = self.decode([alpha], path)[0]
        self._current.set_data(self._display(self.image))
        self._label.set_text(f"alpha = {alpha:.2f}")
        self._strip_artist.set_data(tile_images(self.strip, self.frames, value_range=self.value_range))
        # Frame the strip's tile nearest to alpha.
        _, h, w = self.event_shape
        k = round(alpha * (self.frames - 1))
        self._marker.set_xy((k * (w + 1), 0))
        self.status = (f"x(α) = f⁻¹((1−α)·f(x_a) + α·f(x_b)), {path} path; "
                       f"the strip shows α = 0, {1 / (self.frames - 1):.3g}, ..., 1")

    def _rows(self) -> list[W.Widget]:
        return [row([self.controls["alpha"], self.controls["path"]])]
