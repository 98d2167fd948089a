"""flowlib's Glows (affine, spline couplings), transformer flow vs normflows' Glow: digits bits/dim.

    python benchmarks/digits_vs_peers.py                    # 60 s and 300 s (CPU clock)
    python benchmarks/digits_vs_peers.py --budgets 60       # the quick table
    python benchmarks/digits_vs_peers.py --jobs 2           # the two budgets in two processes

The Glows are multi-scale (Kingma & Dhariwal, 2018) with 2 levels of 4 steps; all systems have the same
parameter count: that of the digits configuration of ``benchmarks/digits_bpd.py`` as flowlib built
it with masked couplings before it sliced them (190,752 parameters at commit 49f0667, the count
the table of RESULTS.md was matched to; the masked form is no longer an option). Every system's
hidden width is searched so that its count is the nearest to that (benchmarks/peers.py,
``match_width``):

- ``flowlib Glow (ResNet conditioner)``: ``glow_image`` with its defaults, affine couplings
  that slice the channels (the conditioner reads the C/2 kept channels) and ResNet conditioners
  (``blocks=1``), learned split priors;
- ``flowlib Glow (Glow conditioner)``: the same with ``conditioner="glow"``, Glow's own
  conv3x3-ReLU-conv1x1-ReLU-zero conv3x3 network (``flowlib.convnets.GlowConditioner``);
- ``flowlib Glow (spline coupling)``: the ResNet-conditioner Glow with ``transformer="spline"``:
  each coupling a rational-quadratic spline of 8 bins on [-4, 4] instead of the affine map
  (Durkan et al., 2019); its conditioners write 23 numbers per transformed entry instead of 2,
  so its matched hidden width is smaller;
- ``normflows Glow``: its GlowBlocks (conv3x3-conv1x1-conv3x3 conditioners, sigmoid scales) and
  GlowBase priors, as in normflows' Glow example;
- ``flowlib transformer flow``: not a Glow but the TarFlow-style model of lecture 6
  (``flowlib.tarflow.tarflow_image``): 4 blocks of alternating direction over the 16 patches of
  2 x 2 pixels, each a causal transformer of 2 attention layers with 4 heads; its width (4 per
  head-unit of ``hidden``) is matched like the others' hidden widths.

Same data convention for all: the 17 grey levels of scikit-learn's digits (flowlib's fixed
1259 / 179 / 359 split), uniform dequantisation y = (x + u) / 17, logit preprocessing with
alpha = 0.05, bits/dim = -log2 P(x) / 64 with the -64 log 17 term included (a uniform model
scores log2 17 = 4.09).

Same training for all, the recipe of ``benchmarks/digits_bpd.py``: ActNorm initialised on the
whole training set, AdamW (lr 5e-3, weight decay 0.5), 100 warm-up steps then a cosine to 0
over the budget, batch 64, gradient-norm clipping at 10, validation once an epoch (its time is
charged to the budget) and the weights with the best validation figure restored at the end.
The models are trained side by side, one step at a time, the one that has used the least of its
budget going next; the clock is this process's CPU time (``--clock cpu``) or wall time.

Parallel runs: the budgets are independent runs, and ``--jobs N`` gives them to N worker
processes (multiprocessing, "spawn" context, each worker with ``--threads`` torch threads); the
table is the same, in the same order. With ``--clock cpu`` each budget is CPU time of the worker
that trains it, so N workers on N free cores are as fair as one.

Test bits/dim: importance-weighted over ``--iw-samples`` dequantisation draws per image (the
bound of Ho et al., 2019, as ``ImageFlowModel.bits_per_dim(x, samples=S)``), and with one draw.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402

from flowlib.data.images import DIGITS_GREY_LEVELS, load_digits  # noqa: E402
from flowlib.image_models import glow_image, mean_bits_per_dim  # noqa: E402
from flowlib.tarflow import tarflow_image  # noqa: E402

SHAPE = (1, 8, 8)
SCALES, DEPTH, BLOCKS = 2, 4, 1
#: The parameter count every system is matched to: the digits Glow of digits_bpd.py as flowlib
#: built it with masked couplings (hidden 32), before it sliced them.
TARGET_PARAMETERS = 190_752


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--budgets", default="60,300", help="comma-separated training budgets, seconds")
    p.add_argument("--clock", default="cpu", choices=["cpu", "wall"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--weight-decay", type=float, default=0.5)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--clip", type=float, default=10.0)
    p.add_argument("--iw-samples", type=int, default=32)
    p.add_argument("--systems", default=DEFAULT, help=f"comma-separated, from {SYSTEMS}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--jobs", type=int, default=1,
                   help="worker processes for the independent budgets (1: all in this process)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


#: The systems, in the table's order. Names may contain commas: ``--systems`` is split back into them.
SYSTEMS = ("flowlib Glow (ResNet conditioner)", "flowlib Glow (Glow conditioner)", "normflows Glow",
           "flowlib transformer flow", "flowlib Glow (spline coupling)")
#: The transformer flow's width is HEADS x its searched ``hidden`` (a width must split into the heads).
HEADS = 4
DEFAULT = ",".join(SYSTEMS)


def maker(name: str) -> Callable[[int], nn.Module]:
    """hidden width -> the model ``name`` of :data:`SYSTEMS`."""
    def flowlib_glow(**options: str) -> Callable[[int], nn.Module]:
        return lambda h: glow_image(SHAPE, scales=SCALES, depth=DEPTH, hidden=h, blocks=BLOCKS,
                                    grey_levels=DIGITS_GREY_LEVELS, **options)

    makers = {
        "flowlib Glow (ResNet conditioner)": flowlib_glow(),
        "flowlib Glow (Glow conditioner)": flowlib_glow(conditioner="glow"),
        "flowlib Glow (spline coupling)": flowlib_glow(transformer="spline"),
        "normflows Glow":
            lambda h: peers.NormflowsImageModel(peers.normflows_glow(SHAPE, SCALES, DEPTH, h), SHAPE,
                                                DIGITS_GREY_LEVELS),
        "flowlib transformer flow":
            lambda h: tarflow_image(SHAPE, patch=2, blocks=4, width=HEADS * h, layers=2, heads=HEADS,
                                    grey_levels=DIGITS_GREY_LEVELS),
    }
    if name not in makers:
        raise SystemExit(f"unknown system {name!r}; choose from {SYSTEMS}")
    return makers[name]


def width(name: str) -> int:
    """The hidden width of ``name`` whose parameter count is the nearest to :data:`TARGET_PARAMETERS`."""
    return peers.match_width(maker(name), TARGET_PARAMETERS, high=512)


def shown_width(name: str, hidden: int) -> str:
    """The table's ``hidden`` entry: conditioner channels for the Glows, model width for the transformer."""
    return f"{HEADS * hidden} (width)" if name == "flowlib transformer flow" else str(hidden)


def build(name: str, hidden: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return maker(name)(hidden)


class Trainer:
    def __init__(self, name: str, model: nn.Module, data: dict, args: argparse.Namespace, budget: float,
                 clock) -> None:
        self.name, self.model, self.data, self.args = name, model, data, args
        self.budget, self.clock = budget, clock
        self.opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        self.g = torch.Generator().manual_seed(args.seed)
        self.order = torch.randperm(data["train"].shape[0], generator=self.g)
        self.pos = 0
        self.used = 0.0
        self.steps = self.skipped = 0
        self.best_val, self.best_step, self.best_state = math.inf, 0, None
        self.sync = torch.device(args.device).type == "cuda"

    @property
    def done(self) -> bool:
        return self.used >= self.budget

    def step(self) -> None:
        a, train = self.args, self.data["train"]
        t0 = self.clock()
        frac = min(self.used / self.budget, 1.0)
        lr = a.lr * min(1.0, (self.steps + 1) / a.warmup) * 0.5 * (1 + math.cos(math.pi * frac))
        for group in self.opt.param_groups:
            group["lr"] = lr
        if self.pos + a.batch > train.shape[0]:  # a new epoch: validate, then reshuffle
            self.validate()
            self.order = torch.randperm(train.shape[0], generator=self.g)
            self.pos = 0
        x = train[self.order[self.pos:self.pos + a.batch]]
        self.pos += a.batch
        loss = self.model.bits_per_dim(x).mean()
        self.opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), a.clip)
            self.opt.step()
        else:
            self.skipped += 1
        if self.sync:
            torch.cuda.synchronize()
        self.steps += 1
        self.used += self.clock() - t0

    def validate(self) -> None:
        val = mean_bits_per_dim(self.model, self.data["val"])
        if val < self.best_val:
            self.best_val, self.best_step = val, self.steps
            self.best_state = copy.deepcopy(self.model.state_dict())

    def finish(self) -> dict:
        self.validate()
        end_val = mean_bits_per_dim(self.model, self.data["val"])
        self.model.load_state_dict(self.best_state)
        torch.manual_seed(self.args.seed + 1)  # the same dequantisation draws for every model
        test_iw = mean_bits_per_dim(self.model, self.data["test"], samples=self.args.iw_samples)
        torch.manual_seed(self.args.seed + 1)
        test_1 = mean_bits_per_dim(self.model, self.data["test"])
        return {"params": peers.count_parameters(self.model), "steps": self.steps, "skipped": self.skipped,
                "best_step": self.best_step, "best_val": self.best_val, "end_val": end_val,
                "test_iw": test_iw, "test_1": test_1, "ms_per_step": 1000 * self.used / max(self.steps, 1)}


def load_data(device: str) -> dict:
    return {s: load_digits(s)[0].float().to(device) for s in ("train", "val", "test")}


def run(budget: float, widths: dict[str, int], data: dict, args: argparse.Namespace) -> dict[str, dict]:
    """Train every system for ``budget`` seconds, side by side; the table's figures per system."""
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    trainers = []
    for name, hidden in widths.items():
        model = build(name, hidden, args.seed).to(args.device)
        model.train()
        with torch.no_grad():  # ActNorm's data-dependent start on the whole training set
            model.log_prob(data["train"])
        trainers.append(Trainer(name, model, data, args, budget, clock))
    while any(not t.done for t in trainers):
        min((t for t in trainers if not t.done), key=lambda t: t.used).step()
    return {t.name: t.finish() for t in trainers}


def _run_task(task: tuple) -> tuple[float, dict[str, dict], float]:
    """One budget's run, here or in a worker (it loads the digits itself): (budget, results, wall s)."""
    budget, widths, args = task
    w0 = time.perf_counter()
    return budget, run(budget, widths, load_data(args.device), args), time.perf_counter() - w0


def run_budgets(budgets: list[float], widths: dict[str, int], args: argparse.Namespace) -> dict[float, dict]:
    """Every budget's run, in this process (``--jobs 1``) or in ``--jobs`` worker processes."""
    tasks = [(b, widths, args) for b in budgets]
    rows = peers.run_tasks(_run_task, tasks, args.jobs, args.threads, cost=lambda t: t[0],
                           label=lambda budget: f"digits, {budget:g} s")
    return {b: rows[b] for b in budgets}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.jobs < 1:
        raise SystemExit("--jobs must be at least 1")
    torch.set_num_threads(args.threads)
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    if not peers.available("normflows"):
        print("normflows is not installed: pip install -r benchmarks/requirements-peers.txt")
        return
    names = peers.parse_names(args.systems, SYSTEMS)
    widths = {name: width(name) for name in names}
    rows = run_budgets(budgets, widths, args)
    workers = (f"; the budgets in {min(args.jobs, len(budgets))} worker processes"
               if args.jobs > 1 and len(budgets) > 1 else "")
    print(f"Test bits/dim on the 8x8 digits (17 levels, lower is better; uniform = {math.log2(17):.3f}), "
          f"{args.clock} clock, {args.threads} torch thread(s) per process, {args.device}{workers}.\n")
    print("| system | hidden | params | budget | steps | best val | test bpd (IW) | test bpd (1 draw) "
          "| ms/step |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for budget, res in rows.items():
        for name, r in res.items():
            skipped = f" ({r['skipped']} skipped)" if r["skipped"] else ""
            print(f"| {name} | {shown_width(name, widths[name])} | {r['params']:,} | {budget:g} s | "
                  f"{r['steps']}{skipped} | "
                  f"{r['best_val']:.3f} | {r['test_iw']:.3f} | {r['test_1']:.3f} | {r['ms_per_step']:.1f} |")
    print(f"\nIW: importance-weighted over {args.iw_samples} dequantisation draws per test image, for the "
          f"weights with the best validation figure. Validation bits/dim at the end of training "
          f"(best at step): "
          + "; ".join(f"{n}, {b:g} s: {r['end_val']:.3f} (step {r['best_step']})"
                      for b, res in rows.items() for n, r in res.items()) + ".")


if __name__ == "__main__":
    main()
