"""Samples of an image flow at temperature T, from noise drawn once, under a slider (lecture 5)."""

from __future__ import annotations

import math
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence

import ipywidgets as W
import numpy as np
import torch
from torch import Tensor, nn

from flowlib._checks import FlowInputError, flag, fraction, integer
from flowlib._modules import evaluating, placement
from flowlib.viz import tile_images
from flowlib.widgets._images import figure_size, image_model
from flowlib.widgets.canvas import Canvas, row, slider

__all__ = ["TemperatureGrid", "PAPER_TEMPERATURES"]

#: The temperatures of Glow's figure 8 (Kingma & Dhariwal, 2018).
PAPER_TEMPERATURES: tuple[float, ...] = (0.0, 0.25, 0.6, 0.7, 0.8, 0.9, 1.0)


class TemperatureGrid(Canvas):
    """Samples of an image flow at temperature T, from noise drawn once.

        eps ~ N(0, I) (drawn once, ``n`` images),   z = base.latent(eps, T),   x = f^{-1}(z)

    where the base writes its own temperature rule: z = T eps for a standard normal,
    z = mu + T sigma eps for a diagonal Gaussian (Kingma & Dhariwal, 2018, section 5 and figure 8:
    T = 0, 0.25, 0.6, 0.7, 0.8, 0.9, 1). T = 0 decodes the mode of the base, the same image ``n``
    times; T = 1 samples the model itself; in between, Glow's "reduced temperature" trades
    diversity for cleaner samples. In a multi-scale flow eps holds every scale's latent, so the
    split priors are cooled as well. Because eps is fixed, sliding T morphs each sample
    continuously: only T changes. Grids already seen are cached: going back costs a redraw.

    Controls: ``temperature`` (a slider on [0, 1] in steps of 0.01); buttons jump to the
    paper's ``temperatures``; "new noise" draws another eps. On display: ``images``
    (n, C, H, W), ``grid`` (the tiled array of the image artist), ``temperature``.
    ``threads``: torch threads used by an update (1 suits a shared 2-core machine);
    ``precompute=True`` decodes the paper's temperatures at construction (for large models, so
    that their buttons answer at once). When the first grid takes longer than
    ``SLOW_DECODE_MS`` to decode, the slider redraws on release rather than during a drag.

    The widget only reads the model (``decode`` in eval mode, without gradients, every flag
    restored). Its noise follows the model's memory layout: convert the model yourself with
    ``model.to(memory_format=torch.channels_last)``, which the CPU's convolutions prefer (see
    ``benchmarks/temperature_latency.py``), and eps is stored that way too. (``channels_last=True``,
    which used to convert the model in place, is deprecated and changes only the noise.)

    ``bfloat16=True`` decodes under ``torch.autocast(dtype=torch.bfloat16)``: the convolutions,
    nearly all of a Glow's decoding time, then run in bfloat16, which a CPU with AMX or
    AVX512-BF16 units computes several times faster (a CPU without them is refused: it would be
    slower). The pictures are an approximation of the float32 ones, a few grey levels apart at
    most (``tests/test_image_widgets.py`` bounds it; ``benchmarks/temperature_latency.py`` times it).
    """

    #: Above this decode time (ms) the slider updates on release only.
    SLOW_DECODE_MS = 300.0

    def __init__(self, model: nn.Module, n: int = 100, temperatures: Sequence[float] = PAPER_TEMPERATURES,
                 temperature: float = 0.7, nrow: int | None = None, seed: int = 0, cache_size: int = 64,
                 value_range: tuple[float, float] = (0.0, 1.0), size: float = 4.5, dpi: int = 80,
                 threads: int = 1, precompute: bool = False, channels_last: bool | None = None,
                 bfloat16: bool = False) -> None:
        who = "TemperatureGrid"
        self.bfloat16 = flag(bfloat16, "bfloat16", who)
        device, _ = placement(model)
        if self.bfloat16 and device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            raise FlowInputError(f"{who}: bfloat16=True needs a CPU with bfloat16 units (AVX512-BF16 or "
                                 f"AMX); on this one decoding in bfloat16 would be slower, not faster")
        self.event_shape = image_model(model, who)
        base = getattr(model, "base", None)
        if not callable(getattr(base, "latent", None)):
            raise FlowInputError(f"{who}: the model's base must offer latent(eps, temperature), as "
                                 f"StandardNormal and DiagonalGaussian do; got {type(base).__name__}")
        self.n = integer(n, "n (the number of samples)", who)
        try:
            temps = tuple(fraction(t, "temperatures", who) for t in temperatures)
        except TypeError:
            temps = ()
        if not temps:
            raise FlowInputError(f"{who}: temperatures must be a non-empty list of numbers in [0, 1], "
                                 f"got {temperatures!r}")
        temperature = fraction(temperature, "temperature", who)
        self.memory_format = _memory_format(model)
        if channels_last is not None:
            flag(channels_last, "channels_last", who)
            warnings.warn(f"{who}(channels_last=...) is deprecated: a widget never changes the model. "
                          f"Convert the model yourself, model.to(memory_format=torch.channels_last); the "
                          f"widget's noise follows the model's layout", DeprecationWarning, stacklevel=2)
            if channels_last:
                self.memory_format = torch.channels_last
        self.model = model
        self.nrow = integer(nrow, "nrow", who) if nrow is not None else math.ceil(math.sqrt(self.n))
        self.temperatures = temps
        self.value_range = value_range
        self.cache_size = integer(cache_size, "cache_size", who)
        self._cache: OrderedDict[float, Tensor] = OrderedDict()
        self.seed = integer(seed, "seed", who, minimum=None)
        self.eps = self._draw_noise(self.seed)

        c, h, w = self.event_shape
        first = tile_images(torch.zeros(self.n, c, h, w), self.nrow)
        super().__init__(figure_size(*first.shape[:2], size), dpi=dpi, threads=threads)
        ax = self.figure.add_axes((0.02, 0.02, 0.96, 0.96 * (1 - 0.35 / self.figure.get_figheight())))
        ax.set_axis_off()
        self._artist = ax.imshow(first, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        self._title = ax.text(0.5, 1.01, "", transform=ax.transAxes, ha="center", va="bottom", fontsize=11)
        self._animate(self._artist, self._title)

        self.controls: dict[str, W.ValueWidget] = {
            "temperature": slider(temperature, 0.0, 1.0, 0.01, "temperature T"),
        }
        self.buttons = [W.Button(description=f"T = {t:g}", layout=W.Layout(width="auto")) for t in temps]
        for button, t in zip(self.buttons, temps, strict=True):
            button.on_click(lambda _b, t=t: self.set_temperature(t))
        self.new_noise = W.Button(description="new noise", icon="refresh", layout=W.Layout(width="auto"))
        self.new_noise.on_click(lambda _b: self.resample())
        self.images: Tensor = torch.zeros(self.n, c, h, w)
        self.grid: np.ndarray = first
        self._watch_controls()
        #: Milliseconds the last decode of the grid took (0 when it came from the cache).
        self.last_decode_ms = 0.0
        slowest = self._fill_cache(temps) if precompute else 0.0  # so that the paper's buttons answer at once
        self.update()
        if max(slowest, self.last_decode_ms) > self.SLOW_DECODE_MS:
            # A large model: decode when the slider is released, not for every position of a drag.
            self.controls["temperature"].continuous_update = False

    # -- the computation -------------------------------------------------------------------
    def _fill_cache(self, temperatures: Sequence[float]) -> float:
        """Decode the grids of ``temperatures`` into the cache; return the slowest decode in ms."""
        threads = torch.get_num_threads()
        slowest = 0.0
        try:
            torch.set_num_threads(self.threads)
            for t in temperatures:
                start = time.perf_counter()
                self._cache[round(float(t), 6)] = self.samples(t)
                slowest = max(slowest, 1000 * (time.perf_counter() - start))
        finally:
            torch.set_num_threads(threads)
        return slowest

    def _draw_noise(self, seed: int) -> Tensor:
        device, dtype = placement(self.model)
        g = torch.Generator().manual_seed(seed)
        # Drawn on the CPU with its own generator (the same eps on every machine), then moved.
        eps = torch.randn((self.n, *self.event_shape), generator=g).to(device=device, dtype=dtype)
        return eps if self.memory_format is None else eps.contiguous(memory_format=self.memory_format)

    def latent(self, temperature: float) -> Tensor:
        """z at ``temperature`` for the fixed eps, by the base's own rule (``base.latent``)."""
        with torch.no_grad():
            return self.model.base.latent(self.eps, temperature)

    def samples(self, temperature: float) -> Tensor:
        """The n images x = f^{-1}(z) at ``temperature`` (CPU, clamped to ``value_range``)."""
        temperature = fraction(temperature, "temperature", "TemperatureGrid.samples")
        device, _ = placement(self.model)
        with evaluating(self.model), torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bfloat16):
            x = self.model.decode(self.latent(temperature))
        return x.detach().to("cpu", torch.float32).clamp(*self.value_range)

    @property
    def temperature(self) -> float:
        return float(self.controls["temperature"].value)

    def set_temperature(self, temperature: float) -> None:
        """Move the slider to ``temperature`` (updates the grid through the slider's observer)."""
        self.controls["temperature"].value = fraction(temperature, "temperature", "TemperatureGrid")

    def resample(self, seed: int | None = None) -> None:
        """Draw a new eps (seed + 1 by default) and redraw; the cache is emptied."""
        self.seed = self.seed + 1 if seed is None else integer(seed, "seed", "TemperatureGrid", minimum=None)
        self.eps = self._draw_noise(self.seed)
        self._cache.clear()
        self.update()

    def _compute(self) -> None:
        t = round(self.temperature, 6)
        images = self._cache.get(t)
        self.last_decode_ms = 0.0
        if images is None:
            start = time.perf_counter()
            images = self.samples(t)
            self.last_decode_ms = 1000 * (time.perf_counter() - start)
            self._cache[t] = images
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(t)
        self.images = images
        self.grid = tile_images(images, self.nrow, value_range=self.value_range)
        self._artist.set_data(self.grid)
        self._title.set_text(f"T = {t:.2f}")
        self.status = (f"{self.n} samples x = f⁻¹(T·ε), the same ε for every T (seed {self.seed}); "
                       f"T = 0 is the mode, T = 1 the model itself")

    def _rows(self) -> list[W.Widget]:
        return [row([self.controls["temperature"], self.new_noise]),
                row([W.Label("the paper's T:"), *self.buttons])]


def _memory_format(model: nn.Module) -> torch.memory_format | None:
    """channels_last when the model's convolution weights are stored that way, else None."""
    for p in model.parameters():
        if p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
    return None
