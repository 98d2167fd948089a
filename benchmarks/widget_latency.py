"""How long one update of each lecture widget takes, control by control, on this CPU.

    python benchmarks/widget_latency.py              # 20 updates per control
    python benchmarks/widget_latency.py --steps 10   # quicker

Each slider is swept from its min to its max in ``--steps`` equal steps (a drag across the
whole slider, larger jumps than a real drag, so the axes rescale more often); drop-downs,
toggles and checkboxes cycle through their values. One update is what a student waits for:
``control.value = v`` runs the widget's observer, which recomputes the densities, updates the
artists and renders the PNG. Printed per control: the median and the 90th percentile of the
wall-clock time (ms) and the median CPU time of this process (ms; on a machine shared with
other jobs this approximates an unloaded machine), against the 150 ms target, and how many
updates had to redraw a panel's axes (its limits or legend changed: "relayout") rather than
the data only.
"""

from __future__ import annotations

import argparse
import os
import time

import ipywidgets as W
import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")

from flowlib.widgets import MAPS_1D, ChangeOfVariables1D, ConvergenceMap, PlanarFlow2D  # noqa: E402

TARGET_MS = 150.0


def sweep_values(control: W.ValueWidget, steps: int) -> list:
    if isinstance(control, W.IntSlider):
        values = np.linspace(control.min, control.max, steps).round().astype(int).tolist()
    elif isinstance(control, W.FloatSlider):
        values = np.linspace(control.min, control.max, steps).tolist()
    elif isinstance(control, W.Checkbox):
        values = [not control.value, control.value] * (steps // 2)
    else:  # drop-down, toggle buttons: cycle through the options, ending where it started
        options = list(control.options)
        start = options.index(control.value)
        values = [options[(start + 1 + i) % len(options)] for i in range(steps)]
    return values


def time_control(widget, name: str, steps: int) -> dict[str, float]:
    control = widget.controls[name]
    start = control.value
    walls, cpus = [], []
    redraws = widget.relayouts
    for value in sweep_values(control, steps):
        if value == control.value:  # no change, no update: move away first, untimed
            continue
        w0, c0 = time.perf_counter(), time.process_time()
        control.value = value
        walls.append(1000 * (time.perf_counter() - w0))
        cpus.append(1000 * (time.process_time() - c0))
    n = len(walls)
    redraws = widget.relayouts - redraws
    control.value = start
    return {"n": n, "median": float(np.median(walls)), "p90": float(np.quantile(walls, 0.9)),
            "cpu": float(np.median(cpus)), "full": redraws}


def report(title: str, widget, names: list[str], steps: int, rows: list) -> None:
    print(f"\n{title}")
    header = f"{'control':<24}{'n':>4}{'median':>9}{'p90':>9}{'cpu med':>9}{'relayout':>9}"
    print(f"  {header}   target {TARGET_MS:.0f} ms")
    for name in names:
        r = time_control(widget, name, steps)
        flag = "ok" if r["p90"] <= TARGET_MS else ("median ok" if r["median"] <= TARGET_MS else "OVER")
        print(f"  {name:<24}{r['n']:>4}{r['median']:>9.1f}{r['p90']:>9.1f}{r['cpu']:>9.1f}"
              f"{r['full']:>9}   {flag}")
        rows.append((title, name, r))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="updates per control")
    args = p.parse_args(argv)
    print(f"CPU cores: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.2f}")
    rows: list = []

    cov = ChangeOfVariables1D()
    report("ChangeOfVariables1D (base, map, drop-Jacobian)", cov, ["base", "transform", "drop_jacobian"],
           args.steps, rows)
    for transform, spec in MAPS_1D.items():
        cov.controls["transform"].value = transform
        report(f"ChangeOfVariables1D, map = {transform}", cov, list(spec.params), args.steps, rows)

    for kind, layers in [("planar", 1), ("planar", 6), ("radial", 1), ("radial", 6)]:
        flow = PlanarFlow2D(kind=kind, layers=layers)
        names = (["w1", "w2", "u1", "u2", "b"] if kind == "planar" else ["z0_1", "z0_2", "alpha", "beta"])
        if layers > 1:
            names.append("turn")
        if kind == "planar" and layers == 1:
            names = ["kind", "layers", "enforce_invertibility", *names]
        report(f"PlanarFlow2D ({kind}, K = {layers}, grid {flow.resolution}x{flow.resolution})",
               flow, names, args.steps, rows)

    lensing = ConvergenceMap(size=64)  # lecture 9
    report("ConvergenceMap (64x64 map, its histogram and spectrum)", lensing, ["sigma_8", "omega_m"],
           args.steps, rows)

    walls = [r["median"] for _, _, r in rows]
    over = [(t, n) for t, n, r in rows if r["p90"] > TARGET_MS]
    print(f"\nall controls: median of medians {np.median(walls):.1f} ms, worst median {max(walls):.1f} ms; "
          f"{len(over)} of {len(rows)} controls have p90 above {TARGET_MS:.0f} ms")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
