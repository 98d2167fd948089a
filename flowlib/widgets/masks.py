"""Coupling masks and the squeeze on a small image: which pixels condition which (lecture 4)."""

from __future__ import annotations

import textwrap

import ipywidgets as W
import numpy as np
import torch
from matplotlib.colors import to_rgb
from matplotlib.patches import Patch, Rectangle
from torch import Tensor, nn

from flowlib._checks import FlowInputError, choice, integer
from flowlib.coupling import AffineCoupling, Coupling, channel_mask, checkerboard_mask
from flowlib.multiscale import squeeze, unsqueeze
from flowlib.transformers import Affine
from flowlib.widgets.canvas import SLIDER_WIDTH, Canvas, row

__all__ = ["MasksAndSqueeze", "MASKS", "CONDITIONERS"]

#: The masks on offer: name -> (squeeze first?, mask kind, parity). Channel masks need the squeeze.
MASKS: dict[str, tuple[bool, str, int]] = {
    "checkerboard": (False, "checkerboard", 0),
    "checkerboard, complement": (False, "checkerboard", 1),
    "squeeze, then channel": (True, "channel", 0),
    "squeeze, then channel, complement": (True, "channel", 1),
    "squeeze, then checkerboard": (True, "checkerboard", 0),
}
#: The conditioners on offer: name -> what it reads.
CONDITIONERS = {"dense": "reads every kept entry", "conv": "two 3x3 convolutions: kept entries up to 2 away"}

#: Colours of the four kinds of pixel, for the selected output pixel p (see MasksAndSqueeze).
PALETTE = {0: "#c6dbef", 1: "#2171b5", 2: "#fdd0a2", 3: "#e6550d"}
LABELS = {0: "kept, does not condition z_p", 1: "kept, conditions z_p (or is p)",
          2: "transformed, not p", 3: "transformed: p itself"}


class _Dense(nn.Module):
    """A conditioner that reads the whole (masked) input: flatten, tanh layer, linear layer, reshape."""

    def __init__(self, shape_in: tuple[int, int, int], shape_out: tuple[int, int, int], hidden: int,
                 g: torch.Generator) -> None:
        super().__init__()
        self.shape_out = shape_out
        n_in, n_out = int(np.prod(shape_in)), int(np.prod(shape_out))
        self.inner, self.outer = nn.Linear(n_in, hidden), nn.Linear(hidden, n_out)
        _randomise(self, g)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.inner(x.flatten(start_dim=1)))
        return self.outer(h).reshape(x.shape[0], *self.shape_out)


class _Conv(nn.Module):
    """Two 3x3 convolutions with a tanh between: each output reads inputs up to 2 pixels away."""

    def __init__(self, c_in: int, c_out: int, hidden: int, g: torch.Generator) -> None:
        super().__init__()
        self.inner, self.outer = nn.Conv2d(c_in, hidden, 3, padding=1), nn.Conv2d(hidden, c_out, 3, padding=1)
        _randomise(self, g)

    def forward(self, x: Tensor) -> Tensor:
        return self.outer(torch.tanh(self.inner(x)))


def _randomise(net: nn.Module, g: torch.Generator) -> None:
    # Random (not zero) weights, so that the coupling moves and every structural dependence shows.
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))


class MasksAndSqueeze(Canvas):
    """A coupling's mask on a one-channel ``size`` x ``size`` image, and the squeeze, pixel by pixel.

    A coupling keeps the entries where its mask m is 1 and transforms the others, each with
    parameters computed from the kept ones: z_A = x_A, z_B = x_B exp(s(x_A)) + t(x_A). The
    mask is a checkerboard on the image itself, or (after a squeeze, (1, H, W) -> (4, H/2, W/2))
    a channel mask or a checkerboard on the squeezed tensor. Choose a pixel p: the left panel
    shows, in image coordinates, which pixels are kept and which transformed, and which inputs
    the output z_p depends on. That dependence is not typed in: it is read from the non-zero
    entries of row p of the Jacobian dz/dx, computed by autograd through a flowlib
    :class:`~flowlib.coupling.AffineCoupling` with that mask (wrapped in ``squeeze`` /
    ``unsqueeze`` for the squeezed masks) and a randomly initialised conditioner, in float64.
    The conditioner is ``"dense"`` (it reads every kept entry, so a transformed pixel depends on
    all of them) or ``"conv"`` (two 3x3 convolutions: only kept entries at most 2 pixels away,
    within the squeezed tensor for the squeezed masks). The right panel is the squeezed tensor,
    its four channels placed where their pixels sit in each 2x2 block (channel 2i + j holds
    pixel (i, j) of every block, by flowlib's ``squeeze``); each cell is numbered with the
    index r * size + c of the image pixel it came from.

    Controls (``.controls``): ``mask`` (a name of :data:`MASKS`), ``conditioner`` (``"dense"``
    or ``"conv"``), ``row`` and ``column`` of p (``pixel``: the first p, by default next to the
    centre). On display: ``categories`` (size x size, the
    colour codes of :data:`PALETTE` per image pixel), ``depends_on()``, ``kept_image()``,
    ``jacobian()``, ``layer``, ``status``.

    >>> w = MasksAndSqueeze(size=4)
    >>> w.controls["mask"].value = "squeeze, then channel"
    >>> w.kept_image().astype(int).tolist()  # channels 0 and 1: the top row of each 2x2 block
    [[1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    """

    def __init__(self, size: int = 8, mask: str = "checkerboard", conditioner: str = "dense",
                 pixel: tuple[int, int] | None = None, hidden: int = 16, seed: int = 0) -> None:
        who = "MasksAndSqueeze"
        size = integer(size, "size", who, minimum=4)
        if size % 2 or size > 16:
            raise FlowInputError(f"{who}: size must be even (the squeeze takes 2x2 blocks) and at most 16, "
                                 f"got {size}")
        choice(mask, "mask", tuple(MASKS), who)
        choice(conditioner, "conditioner", tuple(CONDITIONERS), who)
        self.size, self.hidden = size, integer(hidden, "hidden", who)
        self.seed = integer(seed, "seed", who, None)
        r, c = self._pixel((size // 2 - 1, size // 2) if pixel is None else pixel, who)
        super().__init__(figsize=(10.0, 4.6))
        self._layers: dict[tuple[str, str], AffineCoupling] = {}
        self._jacobians: dict[tuple[str, str], Tensor] = {}
        g = torch.Generator().manual_seed(self.seed + 1)
        self._x = torch.randn(1, 1, size, size, generator=g, dtype=torch.float64)
        # Where each image pixel goes under flowlib's squeeze: the squeezed tensor of pixel indices.
        numbered = torch.arange(size * size, dtype=torch.float64).reshape(1, 1, size, size)
        self.squeezed_index = squeeze(numbered)[0].round().long()

        self.controls["mask"] = W.Dropdown(options=list(MASKS), value=mask, description="mask",
                                           layout=W.Layout(width="330px"))
        self.controls["conditioner"] = W.Dropdown(
            options=[(f"{k}: {v}", k) for k, v in CONDITIONERS.items()], value=conditioner,
            description="conditioner", layout=W.Layout(width="440px"))
        for key, value in (("row", r), ("column", c)):
            self.controls[key] = W.IntSlider(value=value, min=0, max=size - 1, description=f"pixel {key}",
                                             continuous_update=True, style={"description_width": "initial"},
                                             layout=W.Layout(width=SLIDER_WIDTH))
        self._build_figure()
        self._watch_controls()
        self.update()

    def _pixel(self, pixel: object, who: str) -> tuple[int, int]:
        try:
            r, c = (integer(v, "pixel", who, minimum=0) for v in pixel)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise FlowInputError(f"{who}: pixel must be a pair (row, column) of integers in "
                                 f"0..{self.size - 1}, got {pixel!r}") from None
        if max(r, c) >= self.size:
            raise FlowInputError(f"{who}: pixel must be a pair (row, column) of integers in "
                                 f"0..{self.size - 1}, got {pixel!r}")
        return r, c

    # -- the layers and their Jacobians ------------------------------------------------------
    def _layer(self, mask: str, conditioner: str) -> AffineCoupling:
        key = (mask, conditioner)
        if key not in self._layers:
            squeezed, kind, parity = MASKS[mask]
            n = self.size // 2 if squeezed else self.size
            channels = 4 if squeezed else 1
            m = (channel_mask if kind == "channel" else checkerboard_mask)(channels, n, n, parity)
            c_in, c_out = Coupling.conditioner_sizes(m, Affine)
            g = torch.Generator().manual_seed(self.seed)
            net = _Dense((c_in, n, n), (c_out, n, n), 4 * self.hidden, g) if conditioner == "dense" \
                else _Conv(c_in, c_out, self.hidden, g)
            self._layers[key] = AffineCoupling(m, net, clamp=2.0).double()
        return self._layers[key]

    @property
    def layer(self) -> AffineCoupling:
        """The flowlib coupling of the current mask and conditioner (float64)."""
        return self._layer(self.controls["mask"].value, self.controls["conditioner"].value)

    @property
    def squeezed(self) -> bool:
        """Whether the current mask acts on the squeezed tensor."""
        return MASKS[self.controls["mask"].value][0]

    def image_map(self, x: Tensor) -> Tensor:
        """z = F(x) in image coordinates: the coupling, or unsqueeze(coupling(squeeze(x)))."""
        if self.squeezed:
            return unsqueeze(self.layer(squeeze(x))[0])
        return self.layer(x)[0]

    def jacobian(self) -> Tensor:
        """dz/dx in image coordinates, (size^2, size^2): row = output pixel, column = input pixel."""
        key = (self.controls["mask"].value, self.controls["conditioner"].value)
        if key not in self._jacobians:
            n = self.size * self.size
            jac = torch.autograd.functional.jacobian(self.image_map, self._x, vectorize=True)
            self._jacobians[key] = jac.reshape(n, n).detach()
        return self._jacobians[key]

    def kept_image(self) -> np.ndarray:
        """Which image pixels the coupling keeps (its mask, unsqueezed for the squeezed masks)."""
        m = self.layer.mask.unsqueeze(0)
        return (unsqueeze(m) if self.squeezed else m)[0, 0].numpy() > 0.5

    @property
    def pixel(self) -> tuple[int, int]:
        return int(self.controls["row"].value), int(self.controls["column"].value)

    def select(self, row: int, column: int) -> None:
        """Choose the output pixel p = (row, column) (one update)."""
        r, c = self._pixel((row, column), "MasksAndSqueeze.select")
        with self.hold_updates():
            self.controls["row"].value, self.controls["column"].value = r, c

    def depends_on(self) -> np.ndarray:
        """The input pixels z_p depends on: the non-zeros of row p of the Jacobian (size x size)."""
        r, c = self.pixel
        return (self.jacobian()[r * self.size + c] != 0).reshape(self.size, self.size).numpy()

    def channel_of(self, row: int, column: int) -> tuple[int, int, int]:
        """(channel, row, column) of image pixel (row, column) in the squeezed tensor (flowlib's squeeze)."""
        r, c = self._pixel((row, column), "MasksAndSqueeze.channel_of")
        k, i, j = (int(v) for v in (self.squeezed_index == r * self.size + c).nonzero()[0])
        return k, i, j

    # -- figure -----------------------------------------------------------------------------
    # Each panel is drawn as one picture, pixel by pixel (colours, grid lines and the numbers,
    # pre-rendered once as glyph masks): one image per update instead of 2 size^2 texts.
    def _build_figure(self) -> None:
        s, h = self.size, self.size // 2
        cell = min(256 // s, 312 // (s + 2))
        self._cell = cell
        fig = self.figure
        width, height = fig.canvas.get_width_height()
        # Panel A: the s x s image. Panel B: the four tiles with a label row above each and a gap column.
        a_w = a_h = s * cell
        b_w, b_h = (s + 1) * cell, (s + 2) * cell
        left_b = 8 + a_w + 20
        self._ax_x = fig.add_axes((8 / width, (8 + (b_h - a_h) / 2) / height, a_w / width, a_h / height))
        self._ax_z = fig.add_axes((left_b / width, 8 / height, b_w / width, b_h / height))
        self._ax_info = fig.add_axes(((left_b + b_w + 14) / width, 8 / height,
                                      (width - left_b - b_w - 18) / width, b_h / height))
        self._ax_info.set_axis_off()
        # Which cell each pixel of a panel shows: (grid row, grid column), or -1 in the gaps.
        rows_a = np.arange(a_h) // cell
        self._cells_x = (rows_a[:, None] * s + rows_a[None, :]).reshape(a_h, a_w)
        self._cells_z = np.full((b_h, b_w), -1)
        labels_z = []
        for k in range(4):
            top, left = (k // 2) * (h + 1) + 1, (k % 2) * (h + 1)
            labels_z.append((top - 0.5, left + h / 2, f"channel {k}", 8))
            for i in range(h):
                for j in range(h):
                    n = int(self.squeezed_index[k, i, j])
                    rr, cc = (top + i) * cell, (left + j) * cell
                    self._cells_z[rr:rr + cell, cc:cc + cell] = n
        fontsize = 8 if s <= 8 else 6
        numbers_x = [(r + 0.5, c + 0.5, str(r * s + c), fontsize) for r in range(s) for c in range(s)]
        numbers_z = [((k // 2) * (h + 1) + 1 + i + 0.5, (k % 2) * (h + 1) + j + 0.5,
                      str(int(self.squeezed_index[k, i, j])), fontsize)
                     for k in range(4) for i in range(h) for j in range(h)]
        self._glyphs_x = _glyphs(a_w, a_h, cell, numbers_x, fig.dpi)
        self._glyphs_z = _glyphs(b_w, b_h, cell, numbers_z, fig.dpi)
        self._labels_z = _glyphs(b_w, b_h, cell, labels_z, fig.dpi)
        self._lines_x = _grid_lines(a_h, a_w, cell, block=2)
        self._lines_z = _grid_lines(b_h, b_w, cell, block=0)
        self._image_x = self._ax_x.imshow(np.full((a_h, a_w, 3), 255, np.uint8), extent=(0, a_w, a_h, 0),
                                          interpolation="nearest", aspect="auto")
        self._image_z = self._ax_z.imshow(np.full((b_h, b_w, 3), 255, np.uint8), extent=(0, b_w, b_h, 0),
                                          interpolation="nearest", aspect="auto")
        for ax in (self._ax_x, self._ax_z):
            ax.set_axis_off()
        self._ax_x.set_title("the image x: its mask, and the inputs of z_p", fontsize=9.5)
        self._ax_z.set_title("squeezed: channel 2i + j = pixel (i, j) of each 2x2 block", fontsize=9)
        box = {"fill": False, "lw": 2.5, "ec": "k"}
        self._frame_x = self._ax_x.add_patch(Rectangle((0, 0), cell, cell, **box))
        self._frame_z = self._ax_z.add_patch(Rectangle((0, 0), cell, cell, **box))
        self._text = self._ax_info.text(0.0, 1.0, "", va="top", fontsize=8.5,
                                        transform=self._ax_info.transAxes)
        handles = [Patch(facecolor=PALETTE[k], label=LABELS[k]) for k in (1, 0, 3, 2)]
        self._overlay(self._ax_info.legend(handles=handles, loc="lower left", bbox_to_anchor=(-0.04, 0.0),
                                           fontsize=7.5, framealpha=1.0, title="pixels, for the chosen p",
                                           title_fontsize=8))
        self._animate(self._image_x, self._image_z, self._frame_x, self._frame_z, self._text)

    def _rows(self) -> list[W.Widget]:
        c = self.controls
        return [row([c["row"], c["column"]]), row([c["mask"], c["conditioner"]])]

    # -- one update ----------------------------------------------------------------------------
    def _compute(self) -> None:
        s, h, cell = self.size, self.size // 2, self._cell
        r, c = self.pixel
        kept, depends = self.kept_image(), self.depends_on()
        self.categories = np.where(kept, np.where(depends, 1, 0), np.where(depends, 3, 2))
        flat = self.categories.reshape(-1)
        self._image_x.set_data(_paint(flat, self._cells_x, self._glyphs_x, self._lines_x))
        self._image_z.set_data(_paint(flat, self._cells_z, self._glyphs_z, self._lines_z, self._labels_z))
        k, i, j = self.channel_of(r, c)
        self._frame_x.set_xy((c * cell, r * cell))
        self._frame_z.set_xy((((k % 2) * (h + 1) + j) * cell, ((k // 2) * (h + 1) + 1 + i) * cell))

        n_dep, n_kept = int(depends.sum()), int(kept.sum())
        conditioning = int((depends & kept).sum())
        where = f"entry ({i}, {j}) of channel {k} after the squeeze"
        if kept[r, c]:
            fact = f"kept: z_p = x_p, so z_p depends on x_p alone ({n_dep} input)"
        else:
            fact = (f"transformed: z_p = x_p exp(s) + t, with s and t computed from {conditioning} of the "
                    f"{n_kept} kept pixels; {n_dep} inputs in all (x_p too)")
        self._text.set_text(f"p = pixel ({r}, {c}), number {r * s + c}:\n{where}\n\n"
                            + "\n".join(textwrap.wrap(fact, 30)))
        self.status = (f"{self.controls['mask'].value} mask, {self.controls['conditioner'].value} "
                       f"conditioner: {n_kept} of {s * s} pixels kept. Pixel ({r}, {c}) is {where}; {fact}. "
                       f"Read off the non-zeros of row {r * s + c} of dz/dx (autograd through the flowlib "
                       f"AffineCoupling).")


_RGB = np.array([to_rgb(PALETTE[k]) for k in range(4)] + [(1.0, 1.0, 1.0)])


def _paint(categories: np.ndarray, cells: np.ndarray, glyphs: np.ndarray, lines: np.ndarray,
           labels: np.ndarray | None = None) -> np.ndarray:
    """One panel's pixels: each cell's colour, its grid lines, its number (white on the dark colours)."""
    code = np.where(cells >= 0, categories[np.maximum(cells, 0)], 4)
    rgb = _RGB[code]
    rgb[lines == 1] = 1.0
    rgb[lines == 2] = 0.25
    ink = np.where((code == 1) | (code == 3), 1.0, 0.0)[..., None]
    rgb = rgb * (1 - glyphs[..., None]) + ink * glyphs[..., None]
    if labels is not None:
        rgb = rgb * (1 - labels[..., None])
    return (255 * rgb + 0.5).astype(np.uint8)


def _glyphs(width: int, height: int, cell: int, texts: list[tuple[float, float, str, float]],
            dpi: float) -> np.ndarray:
    """The coverage (0..1) of ``texts`` (row, column in cells, string, font size), rendered once."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.patch.set_alpha(0.0)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    for r, c, text, size in texts:
        ax.text(c * cell, r * cell, text, ha="center", va="center", fontsize=size)
    fig.canvas.draw()
    alpha = np.asarray(fig.canvas.buffer_rgba())[..., 3] / 255.0
    return alpha[:height, :width]


def _grid_lines(height: int, width: int, cell: int, block: int) -> np.ndarray:
    """1 on the cell boundaries, 2 on the boundaries of ``block`` x ``block`` cells (two pixels wide)."""
    ys, xs = np.arange(height), np.arange(width)
    lines = np.where((ys % cell == 0)[:, None] | (xs % cell == 0)[None, :], 1, 0)
    if block:
        span = block * cell
        on_y = (ys % span <= 1) | (ys >= height - 2)
        on_x = (xs % span <= 1) | (xs >= width - 2)
        lines[on_y[:, None] | on_x[None, :]] = 2
    return lines
