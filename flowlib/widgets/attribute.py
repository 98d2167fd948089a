"""Slide a row of images along a direction of the latent space, under a slider (lecture 7)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping

import ipywidgets as W
import numpy as np
import torch
from torch import Tensor, nn

from flowlib._checks import FlowInputError, integer, number
from flowlib._modules import evaluating, placement
from flowlib.viz import tile_images
from flowlib.widgets._images import grey_levels, image_model
from flowlib.widgets.canvas import Canvas, row, slider

__all__ = ["AttributeSlider"]


class AttributeSlider(Canvas):
    """A row of images moved along a latent direction d (Kingma & Dhariwal, 2018, section 5):

        z = f(x)  (once),   x'(alpha) = f^{-1}(z + alpha d)

    The top row shows the images x (alpha = 0 gives them back exactly, the flow being
    invertible), the bottom row x'(alpha). ``directions`` is one direction (a tensor of the
    latent's shape (C, H, W)) or a mapping name -> direction, e.g. those of
    :func:`flowlib.editing.attribute_direction`; with several, a menu picks one. ``x``: images
    (n, C, H, W), grey levels as the data sets return them (shown at the centre of their bin,
    (k + 1/2) / K) or floats in [0, 1].

    Controls: ``alpha`` (a slider on [-``alpha_max``, ``alpha_max``] in steps of ``step``) and,
    with several directions, ``direction``. On display: ``images`` (n, C, H, W) at the current
    alpha, on the CPU in [0, 1]; ``alpha``; ``last_decode_ms``. The latents are encoded once at
    construction, and every row decoded is kept (up to ``cache_size``), so going back to an alpha
    costs only a redraw; ``precompute=True`` decodes every slider position of every direction at
    construction. The widget only reads the model (``encode`` / ``decode`` in eval mode, without
    gradients, every flag restored).
    """

    def __init__(self, model: nn.Module, x: Tensor, directions: Tensor | Mapping[str, Tensor],
                 alpha: float = 0.0, alpha_max: float = 3.0, step: float = 0.1, context: object = None,
                 cache_size: int = 256, precompute: bool = False, size: float = 7.0, dpi: int = 80,
                 threads: int = 1) -> None:
        who = "AttributeSlider"
        self.event_shape = image_model(model, who)
        self.model = model
        self.context = context
        self.alpha_max = number(alpha_max, "alpha_max", who, minimum=0.0, strict=True)
        self.step = number(step, "step", who, minimum=0.0, maximum=self.alpha_max)
        if self.step <= 0:
            raise FlowInputError(f"{who}: step must be positive, got {step}")
        alpha = number(alpha, "alpha", who, minimum=-self.alpha_max, maximum=self.alpha_max)
        self.cache_size = integer(cache_size, "cache_size", who)
        self.x = self._to_unit(x)
        self.n = self.x.shape[0]
        self.directions = self._directions(directions)
        with evaluating(model), torch.no_grad():
            self.z = model.encode(self.x, context) if context is not None else model.encode(self.x)
        self._cache: OrderedDict[tuple[str, float], Tensor] = OrderedDict()

        c, h, w = self.event_shape
        top = tile_images(self.x.detach().cpu().float().clamp(0, 1), self.n)
        width = min(size, 10.0)
        height = max(1.6, 2 * width / top.shape[1] * top.shape[0] + 0.8)
        super().__init__((width, height), dpi=dpi, threads=threads)
        cmap = "gray" if c == 1 else None
        ax_top = self.figure.add_axes((0.01, 0.52, 0.98, 0.38))
        ax_bottom = self.figure.add_axes((0.01, 0.04, 0.98, 0.38))
        for ax in (ax_top, ax_bottom):
            ax.set_axis_off()
        ax_top.imshow(top, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax_top.set_title("x (alpha = 0)", fontsize=10)
        self._artist = ax_bottom.imshow(top, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        self._label = ax_bottom.text(0.5, 1.02, "", transform=ax_bottom.transAxes, ha="center", va="bottom",
                                     fontsize=10)
        self._animate(self._artist, self._label)

        names = list(self.directions)
        self.controls: dict[str, W.ValueWidget] = {
            "alpha": slider(alpha, -self.alpha_max, self.alpha_max, self.step, "alpha"),
        }
        if len(names) > 1:
            self.controls["direction"] = W.Dropdown(options=names, value=names[0], description="direction",
                                                    layout=W.Layout(width="260px"))
        self.images: Tensor = self.x.detach().cpu().float().clamp(0, 1)
        #: Milliseconds the last decode took (0 when the row came from the cache).
        self.last_decode_ms = 0.0
        if precompute:
            self._precompute()
        self._watch_controls()
        self.update()

    # -- inputs ------------------------------------------------------------------------------
    def _to_unit(self, x: Tensor) -> Tensor:
        who = "AttributeSlider: x"
        if not isinstance(x, Tensor):
            raise FlowInputError(f"{who}: expected a torch.Tensor of images, got {type(x).__name__}")
        x = x.unsqueeze(0) if x.dim() == 3 else x
        if x.dim() != 4 or tuple(x.shape[1:]) != self.event_shape or x.shape[0] == 0:
            shape = ", ".join(map(str, self.event_shape))
            raise FlowInputError(f"{who}: expected images of shape (n, {shape}), got {tuple(x.shape)}")
        device, dtype = placement(self.model)
        x = x.detach().to(device)
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise FlowInputError(f"{who}: expected finite images")
        levels = grey_levels(self.model)
        if not x.is_floating_point() or float(x.max()) > 1:
            if levels is None:
                raise FlowInputError(f"{who}: integer grey levels need a model with .grey_levels; "
                                     f"pass floats in [0, 1] instead")
            from flowlib.dequantize import as_levels

            return ((as_levels(x, levels, who) + 0.5) / levels).to(dtype)
        if float(x.min()) < 0:
            raise FlowInputError(f"{who}: expected floats in [0, 1] or integer grey levels, got values in "
                                 f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
        return x.to(dtype)

    def _directions(self, directions: Tensor | Mapping[str, Tensor]) -> dict[str, Tensor]:
        who = "AttributeSlider: directions"
        if isinstance(directions, Tensor):
            directions = {"d": directions}
        if not isinstance(directions, Mapping) or not directions:
            raise FlowInputError(f"{who}: expected a tensor or a non-empty mapping name -> tensor, got "
                                 f"{type(directions).__name__}")
        device, dtype = placement(self.model)
        out = {}
        for name, d in directions.items():
            if not isinstance(d, Tensor) or tuple(d.shape[-3:]) != self.event_shape or d.dim() not in (3, 4) \
                    or (d.dim() == 4 and d.shape[0] != 1):
                shape = tuple(d.shape) if isinstance(d, Tensor) else type(d).__name__
                raise FlowInputError(f"{who}: direction {name!r} must have the latent's shape "
                                     f"{self.event_shape}, got {shape}")
            if not bool(torch.isfinite(d).all()):
                raise FlowInputError(f"{who}: direction {name!r} is not finite")
            out[str(name)] = d.detach().reshape(self.event_shape).to(device=device, dtype=dtype)
        return out

    # -- the computation -------------------------------------------------------------------
    def edited(self, alpha: float, direction: str | None = None) -> Tensor:
        """x'(alpha) = f^{-1}(f(x) + alpha d) for the images: (n, C, H, W) on the CPU, in [0, 1]."""
        name = self.direction if direction is None else direction
        if name not in self.directions:
            raise FlowInputError(f"AttributeSlider.edited: unknown direction {name!r}; "
                                 f"known: {list(self.directions)}")
        alpha = number(alpha, "alpha", "AttributeSlider.edited")
        z = self.z + alpha * self.directions[name]
        with evaluating(self.model), torch.no_grad():
            x = self.model.decode(z, self.context) if self.context is not None else self.model.decode(z)
        return x.detach().to("cpu", torch.float32).clamp(0, 1)

    def _key(self, alpha: float, name: str) -> tuple[str, float]:
        return name, round(float(alpha) / self.step) * self.step

    def _precompute(self) -> None:
        steps = round(self.alpha_max / self.step)
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(self.threads)
            for name in self.directions:
                for k in range(-steps, steps + 1):
                    key = self._key(k * self.step, name)
                    self._cache[key] = self.edited(key[1], name)
        finally:
            torch.set_num_threads(threads)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    @property
    def alpha(self) -> float:
        return float(self.controls["alpha"].value)

    @property
    def direction(self) -> str:
        control = self.controls.get("direction")
        return control.value if control is not None else next(iter(self.directions))

    def _compute(self) -> None:
        name, alpha = self.direction, self.alpha
        key = self._key(alpha, name)
        images = self._cache.get(key)
        self.last_decode_ms = 0.0
        if images is None:
            start = time.perf_counter()
            images = self.edited(alpha, name)
            self.last_decode_ms = 1000 * (time.perf_counter() - start)
            self._cache[key] = images
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        self.images = images
        grid: np.ndarray = tile_images(images, self.n)
        self._artist.set_data(grid)
        self._label.set_text(f"f⁻¹(f(x) + α d), α = {alpha:+.2f}")
        norm = float(self.directions[name].norm())
        self.status = (f"direction {name!r} (|d| = {norm:.3g}); α = 0 gives the images back exactly, "
                       f"α > 0 adds d, α < 0 takes it away")

    def _rows(self) -> list[W.Widget]:
        return [row([self.controls[k] for k in self.controls])]
