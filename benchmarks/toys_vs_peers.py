"""flowlib against zuko, nflows and normflows on 2D toys: exact KL(data || model) after a fixed budget.

    python benchmarks/toys_vs_peers.py                           # 30 s and 120 s (CPU clock), 3 toys
    python benchmarks/toys_vs_peers.py --budgets 10 --kl-samples 100000      # the quick table
    python benchmarks/toys_vs_peers.py --systems "flowlib RealNVP,zuko NSF" --toys two_moons
    python benchmarks/toys_vs_peers.py --jobs 2                  # two (toy, budget) runs at a time

Systems (benchmarks/peers.py): flowlib's ``realnvp_vector`` (affine couplings that slice the vector: the
conditioner reads the kept coordinates only), ``glow_vector`` (ActNorm, LU linear map, affine
coupling); zuko's MAF and NSF, nflows' RealNVP, MAF and
NSF, normflows' RealNVP and NSF. All have (close to) the same number of parameters: each family
has a fixed depth (``--depth`` affine layers, ``--spline-depth`` spline layers) and its hidden
width is searched so that its count is nearest to that of flowlib's default RealNVP
(``realnvp_vector(2)``: 12 couplings, 64 units). The table reports the counts. System names may
contain commas; ``--systems`` splits the list back into known names.

All systems are trained by the same loop, the recipe of ``benchmarks/toy_kl.py``: Adam,
linear warm-up then a cosine to 0 over the budget, batch 512 doubled after 60 % of the budget,
gradient-norm clipping at 5; a step whose loss is not finite is skipped (and counted).

Side by side: the systems of one toy and one budget are trained together, one step at a time,
always advancing the one that has used the least of its budget. Any load the shared machine
has at a moment falls on all of them alike. The budget's clock is this process's CPU time by
default (``--clock cpu``, with 1 torch thread: the time the work itself took, hardly affected
by other jobs), or wall-clock time (``--clock wall``, the natural choice on a GPU).

Parallel runs: the (toy, budget) runs are independent, and ``--jobs N`` gives them to N worker
processes (multiprocessing, "spawn" context, each worker with ``--threads`` torch threads); the
table is the same, in the same order. The systems of one run still train side by side in one
process. With ``--clock cpu`` each budget is CPU time of the worker that trains it, so N workers
on N free cores are as fair as one; with ``--clock wall``, or more workers than free cores, the
workers slow each other down and the budgets buy fewer steps.

KL(p_data || p_model) = E_data[log p_data - log p_model] is estimated over ``--kl-samples``
fresh samples with each toy's exact log-density (flowlib.metrics.kl_divergence_estimate), the
same samples for every system; its standard error is typically below 0.002 nats.

Prints a markdown table (one row per system, one KL column per toy and budget).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402

from flowlib.data.toys import get_toy  # noqa: E402
from flowlib.metrics import kl_divergence_estimate  # noqa: E402
from flowlib.models import realnvp_vector  # noqa: E402

TOYS = "eight_gaussians,two_moons,checkerboard"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--budgets", default="30,120", help="comma-separated training budgets, seconds")
    p.add_argument("--clock", default="cpu", choices=["cpu", "wall"],
                   help="budget clock: this process's CPU time or wall-clock time")
    p.add_argument("--toys", default=TOYS, help="comma-separated toy names")
    p.add_argument("--systems", default=",".join(peers.VECTOR_SYSTEMS), help="comma-separated systems")
    p.add_argument("--depth", type=int, default=12, help="layers of the affine families (RealNVP, Glow, MAF)")
    p.add_argument("--spline-depth", type=int, default=6, help="layers of the spline families (NSF)")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--clip", type=float, default=5.0)
    p.add_argument("--kl-samples", type=int, default=200_000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (the machine is shared)")
    p.add_argument("--jobs", type=int, default=1,
                   help="worker processes for the independent (toy, budget) runs (1: all in this process)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


class Trainer:
    """One system's training state; ``step()`` does one optimisation step and charges its time."""

    def __init__(self, name: str, model: nn.Module, args: argparse.Namespace, budget: float,
                 toy: object, clock) -> None:
        self.name, self.model, self.args = name, model, args
        self.budget, self.toy, self.clock = budget, toy, clock
        self.opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        self.g = torch.Generator().manual_seed(args.seed + 1)
        self.used = 0.0
        self.steps = self.skipped = 0
        self.device = torch.device(args.device)

    @property
    def done(self) -> bool:
        return self.used >= self.budget

    def step(self) -> None:
        a = self.args
        sync = self.device.type == "cuda"
        t0 = self.clock()
        frac = min(self.used / self.budget, 1.0)
        lr = a.lr * min(1.0, (self.steps + 1) / max(a.warmup, 1)) * 0.5 * (1 + math.cos(math.pi * frac))
        for group in self.opt.param_groups:
            group["lr"] = lr
        batch = a.batch * (2 if frac >= 0.6 else 1)
        x = self.toy.sample(batch, generator=self.g).to(self.device)
        loss = -self.model.log_prob(x).mean()
        self.opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), a.clip)
            self.opt.step()
        else:
            self.skipped += 1
        if sync:
            torch.cuda.synchronize()
        self.steps += 1
        self.used += self.clock() - t0


def target_parameters(args: argparse.Namespace) -> int:
    """The parameter count every system is matched to: flowlib's default RealNVP at ``--depth``."""
    return peers.count_parameters(realnvp_vector(2, couplings=args.depth))


def widths_for(names: list[str], args: argparse.Namespace) -> dict[str, tuple[int, int]]:
    """name -> (depth, hidden width), the width whose parameter count is nearest to the target."""
    target = target_parameters(args)
    dummy = torch.randn(64, 2)
    out = {}
    for name in names:
        depth = args.spline_depth if peers.VECTOR_SYSTEMS[name][3] == "spline" else args.depth
        width = peers.match_width(lambda h, n=name, d=depth: peers.build_vector(n, 2, d, h, dummy), target)
        out[name] = (depth, width)
    return out


def build_all(shapes: dict[str, tuple[int, int]], toy: object,
              args: argparse.Namespace) -> dict[str, nn.Module]:
    """Every system at its (depth, width); ActNorm and the peers' standardisation started on 8192 samples."""
    data = toy.sample(8192, generator=torch.Generator().manual_seed(args.seed))
    models = {}
    for name, (depth, width) in shapes.items():
        torch.manual_seed(args.seed)
        model = peers.build_vector(name, 2, depth, width, data).to(args.device)
        model.depth, model.width = depth, width
        model.train()
        with torch.no_grad():  # data-dependent initialisations (ActNorm) on one large batch
            model.log_prob(data.to(args.device))
        models[name] = model
    return models


def run_toy(toy_name: str, shapes: dict[str, tuple[int, int]], budget: float,
            args: argparse.Namespace) -> dict[str, dict]:
    """Train every system on one toy for ``budget`` seconds, side by side; KL and counts per system."""
    toy = get_toy(toy_name)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    models = build_all(shapes, toy, args)
    trainers = [Trainer(n, m, args, budget, toy, clock) for n, m in models.items()]
    while True:
        left = [t for t in trainers if not t.done]
        if not left:
            break
        min(left, key=lambda t: t.used).step()
    out = {}
    for t in trainers:
        t.model.eval()
        try:
            kl = kl_divergence_estimate(toy, t.model, n=args.kl_samples,
                                        generator=torch.Generator().manual_seed(10_000 + args.seed))
            value, err = kl.value, kl.stderr
        except Exception as exc:  # a peer that fails at evaluation must not stop the others
            print(f"  {t.name} on {toy_name}: evaluation failed: {exc}", file=sys.stderr)
            value, err = math.nan, math.nan
        out[t.name] = {"kl": value, "stderr": err, "steps": t.steps, "skipped": t.skipped,
                       "params": peers.count_parameters(t.model), "depth": t.model.depth,
                       "width": t.model.width, "ms_per_step": 1000 * t.used / max(t.steps, 1)}
    return out


def _run_task(task: tuple) -> tuple[tuple[str, float], dict[str, dict], float]:
    """One (toy, budget) run, in this process or in a worker: (key, results, wall seconds)."""
    toy, budget, shapes, args = task
    w0 = time.perf_counter()
    return (toy, budget), run_toy(toy, shapes, budget, args), time.perf_counter() - w0


def run_all(toys: list[str], budgets: list[float], shapes: dict[str, tuple[int, int]],
            args: argparse.Namespace) -> dict[tuple[str, float], dict[str, dict]]:
    """Every (toy, budget) run, in this process (``--jobs 1``) or in ``--jobs`` worker processes."""
    tasks = [(toy, budget, shapes, args) for budget in budgets for toy in toys]
    return peers.run_tasks(_run_task, tasks, args.jobs, args.threads, cost=lambda t: t[1],
                           label=lambda key: f"{key[0]}, {key[1]:g} s")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.jobs < 1:
        raise SystemExit("--jobs must be at least 1")
    torch.set_num_threads(args.threads)
    toys = [t.strip() for t in args.toys.split(",") if t.strip()]
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    names = peers.parse_names(args.systems, list(peers.VECTOR_SYSTEMS))
    unknown = [n for n in names if n not in peers.VECTOR_SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; choose from {list(peers.VECTOR_SYSTEMS)}")
    missing = [n for n in names if not peers.available(peers.VECTOR_SYSTEMS[n][0])]
    names = [n for n in names if n not in missing]
    shapes = widths_for(names, args)
    results = run_all(toys, budgets, shapes, args)

    cols = [(t, b) for b in budgets for t in toys]
    first = results[cols[0]]
    shown = ", ".join(f"{b:g}" for b in budgets)
    workers = (f"; the (toy, budget) runs in {min(args.jobs, len(cols))} worker processes"
               if args.jobs > 1 and len(cols) > 1 else "")
    print(f"KL(data || model) in nats (lower is better; 0 = exact) after {shown} s "
          f"of {args.clock} time per system, {args.threads} torch thread(s) per process, {args.device}"
          f"{workers}; {args.kl_samples} samples per estimate.\n")
    print("| system | depth x width | params | " + " | ".join(f"{t} {b:g} s" for t, b in cols)
          + " | ms/step |")
    print("|---|---|---:|" + "---:|" * len(cols) + "---:|")
    for n in names:
        r0 = first[n]
        cells = []
        for c in cols:
            r = results[c][n]
            cell = f"{r['kl']:.3f}" if math.isfinite(r["kl"]) else "nan"
            if r["skipped"]:
                cell += f" ({r['skipped']} skipped)"
            cells.append(cell)
        ms = sum(results[c][n]["ms_per_step"] for c in cols) / len(cols)
        print(f"| {n} | {r0['depth']} x {r0['width']} | {r0['params']:,} | " + " | ".join(cells)
              + f" | {ms:.1f} |")
    print()
    errs = [r["stderr"] for res in results.values() for r in res.values() if math.isfinite(r["stderr"])]
    steps = {n: [results[c][n]["steps"] for c in cols] for n in names}
    print(f"Standard errors of the KL estimates: at most {max(errs):.4f} nats. Steps done per column: "
          + "; ".join(f"{n} {'/'.join(map(str, s))}" for n, s in steps.items()) + ".")
    if missing:
        print(f"\nNot installed, left out: {', '.join(missing)} "
              "(pip install --no-deps -r benchmarks/requirements-peers.txt).")


if __name__ == "__main__":
    main()
