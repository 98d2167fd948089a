"""Training and sampling throughput of a Glow at MNIST size: flowlib against normflows, side by side.

    python benchmarks/throughput.py                      # CPU, batch 32 (train) / 64 (sample)
    python benchmarks/throughput.py --device cuda --train-batch 256 --sample-batch 1024
    python benchmarks/throughput.py --profile            # + the top operators of one training step
    python benchmarks/throughput.py --compile            # + torch.compile rows (minutes of compiling)
    python benchmarks/throughput.py --vector             # + the toys' RealNVP: AdamW vs fused AdamW

The model: MNIST digits (1x28x28, 256 levels) padded to 1x32x32, a multi-scale Glow (Kingma &
Dhariwal, 2018) with 3 levels of 8 steps and 64 hidden channels in every conditioner. Every
flowlib row is ``flowlib.image_models.glow_image((1, 32, 32), scales=3, depth=8, hidden=64,
blocks=1, ...)`` with one of its options, so that each change shows as a before / after pair:

- the two conditioners of flowlib's one ``Coupling`` (it slices the channels: the conditioner
  reads the C/2 kept channels and writes 2 x C/2): ``conditioner="resnet"`` (the default: 3x3
  conv in, one residual block of two 3x3 convs, zero 3x3 conv out) and ``conditioner="glow"``
  (Glow's conv3x3 -> ReLU -> conv1x1 -> ReLU -> zero conv3x3, ``flowlib.convnets.GlowConditioner``,
  the network normflows uses: with it the model has normflows' architecture). The masked form
  that flowlib used before (the conditioner read all C masked channels and wrote 2C) no longer
  exists as an option; its before/after figures, measured at commit 49f0667, stay in HISTORY.md;
- ``normflows Glow``: normflows' GlowBlocks and GlowBase priors as its Glow example builds them,
  the reference of the ratio columns;
- AdamW -> fused AdamW: the Glow-conditioner model trained with ``AdamW(fused=True)``
  (one kernel for all parameters), what ``flowlib.train.fit`` now makes, against torch's
  default AdamW (a loop over the parameters on a CPU), what it made before; every other row
  uses the default AdamW (weight decay 0, as ``fit``'s default);
- contiguous -> channels_last (``--channels-last``): the Glow-conditioner model and
  normflows with ``torch.channels_last`` model and batches, as ``fit(channels_last=True)``;
- with ``--compile``: the same two with the loss (and the sampler) under ``torch.compile``.

The "vs before" columns divide a row's images/s by those of the row it changes (named in the
list under the table).

Protocol: every system gets ``--warmup`` untimed steps, then ``--rounds`` rounds in which each
system does one timed training step (forward, backward, optimiser step) in turn, so that the
load of a shared machine falls on all of them alike; the figure is the median over rounds (CPU
time of this process with ``--clock cpu``, the default on a CPU; wall time, with CUDA
synchronisation, on a GPU). Sampling likewise: eval mode, no gradient, ``model.sample(n)`` at
temperature 1. The "vs normflows" columns divide images/s of the row by images/s of normflows
(> 1: faster). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402

from flowlib.data.images import DatasetError, load_mnist, pad_to  # noqa: E402
from flowlib.image_models import count_parameters, glow_image  # noqa: E402
from flowlib.linear import InvertibleLinearLU  # noqa: E402
from flowlib.models import realnvp_vector  # noqa: E402

SHAPE = (1, 32, 32)
SCALES, DEPTH, HIDDEN = 3, 8, 64

RESNET_SPLIT = "flowlib glow_image ResNet"
GLOW_SPLIT = "flowlib glow_image Glow conditioner"
NORMFLOWS = "normflows Glow"
NO_LU_CACHE = f"{GLOW_SPLIT}, LU weights rebuilt at every call (before)"


def flowlib_glow(conditioner: str) -> Callable[[], nn.Module]:
    return lambda: glow_image(SHAPE, scales=SCALES, depth=DEPTH, hidden=HIDDEN, blocks=1, grey_levels=256,
                              conditioner=conditioner)


def systems(channels_last: bool, compiled: bool) -> dict[str, tuple[Callable[[], nn.Module], str | None]]:
    """Row name -> (model builder, the row it is the "after" of, or None); a row's name says its options."""
    out: dict[str, tuple[Callable[[], nn.Module], str | None]] = {
        RESNET_SPLIT: (flowlib_glow("resnet"), None),
        GLOW_SPLIT: (flowlib_glow("glow"), None),
        NORMFLOWS: (lambda: peers.NormflowsImageModel(peers.normflows_glow(SHAPE, SCALES, DEPTH, HIDDEN),
                                                      SHAPE, 256), None),
    }
    out[f"{GLOW_SPLIT} + fused AdamW"] = (out[GLOW_SPLIT][0], GLOW_SPLIT)
    # The eval-mode cache of InvertibleLinearLU (W, W^-1, log|det W|) switched off: what sampling
    # cost before the cache (training recomputes them anyway; see the note under the table).
    out[NO_LU_CACHE] = (out[GLOW_SPLIT][0], None)
    for suffix, wanted in ((" + channels_last", channels_last), (" + torch.compile", compiled)):
        if wanted:
            for key in (GLOW_SPLIT, NORMFLOWS):
                out[key + suffix] = (out[key][0], key)
    return out


def load_data(n: int) -> tuple[Tensor, str]:
    """n MNIST training images padded to 32x32 as float levels, or random levels when MNIST is absent."""
    try:
        x = load_mnist("train", download=False)[0][:n]
        return pad_to(x, 32).float(), "MNIST"
    except DatasetError:
        return torch.randint(0, 256, (n, *SHAPE)).float(), "random levels (MNIST not found)"


def _rebuild_every_call(layer: InvertibleLinearLU) -> None:
    """Make ``layer`` compute W, W^-1 and log|det W| from its LU factors at every call (no cache)."""
    compute = {"weight": layer._compute_weight, "inverse": layer._compute_inverse_weight,
               "logdet": layer._compute_log_abs_det}
    layer._get = lambda name: compute[name]()


class System:
    def __init__(self, name: str, make: Callable[[], nn.Module], before: str | None, x: Tensor,
                 args: argparse.Namespace) -> None:
        torch.manual_seed(args.seed)
        self.name, self.before = name, before
        self.model = make().to(args.device)
        if name == NO_LU_CACHE:
            for layer in self.model.modules():
                if isinstance(layer, InvertibleLinearLU):
                    _rebuild_every_call(layer)
        self.channels_last = "channels_last" in name
        self.x = x.to(args.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.model.train()
        with torch.no_grad():
            self.model.log_prob(self.x)  # ActNorm's data-dependent initialisation
        # AdamW as torch makes it by default on a CPU (a loop over the parameters; fit before), or its
        # fused kernel (fit now).
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-5, weight_decay=0.0,
                                     fused="fused AdamW" in name or None)
        self.loss = lambda x: self.model.bits_per_dim(x).mean()
        self.sampler = self.model.sample
        if "torch.compile" in name:
            self.loss = torch.compile(self.loss)
            self.sampler = torch.compile(self.sampler)
        self.train_times: list[float] = []
        self.sample_times: list[float] = []
        # --amp bf16: every system's forward passes (training loss, sampling) under the same autocast.
        self.autocast = {"device_type": torch.device(args.device).type, "dtype": torch.bfloat16,
                         "enabled": args.amp == "bf16"}

    def train_step(self, n: int) -> None:
        self.model.train()
        with torch.autocast(**self.autocast):
            loss = self.loss(self.x[:n])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    @torch.no_grad()
    def sample(self, n: int) -> None:
        self.model.eval()
        with torch.autocast(**self.autocast):
            self.sampler(n)


def timed(fn: Callable[[], None], clock: Callable[[], float], cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    t0 = clock()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return clock() - t0


def profile_step(system: System, n: int, rows: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            system.train_step(n)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def vector_table(args: argparse.Namespace, clock: Callable[[], float], rounds: int = 40) -> None:
    """Training steps/s of the toys' RealNVP (d = 2, 12 couplings x 64 units, batch 512, clipping):
    ``realnvp_vector(2)`` with torch's default AdamW (before) and ``AdamW(fused=True)`` (what ``fit``
    now makes)."""
    x = torch.randn(512, 2, generator=torch.Generator().manual_seed(args.seed)).to(args.device)
    rows = {}
    for model_name in ("realnvp_vector",):
        for fused in (False, True):
            torch.manual_seed(args.seed)
            model = realnvp_vector(2).to(args.device)
            model.train()
            with torch.no_grad():
                model.log_prob(x)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=fused or None)
            optimiser = "fused AdamW" if fused else "AdamW default (before)"
            rows[f"flowlib {model_name}; {optimiser}"] = (model, opt, [])

    def step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
        loss = -model.log_prob(x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    for model, opt, _ in rows.values():
        for _ in range(3):
            step(model, opt)
    cuda = torch.device(args.device).type == "cuda"
    for _ in range(rounds):
        for model, opt, times in rows.values():
            times.append(timed(lambda m=model, o=opt: step(m, o), clock, cuda))
    base = statistics.median(next(iter(rows.values()))[2])
    print(f"\nA training step of the toys' RealNVP (d = 2, 12 couplings x 64 units, batch 512, clipping), "
          f"median of {rounds} alternated rounds; the speed-up is against the first row (torch's "
          f"default AdamW: flowlib before fused AdamW):\n")
    print("| variant | params | ms/step | speed-up |")
    print("|---|---:|---:|---:|")
    for name, (model, _, times) in rows.items():
        ms = statistics.median(times)
        print(f"| {name} | {count_parameters(model):,} | {1000 * ms:.1f} | {base / ms:.2f} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--sample-batch", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per system")
    p.add_argument("--rounds", type=int, default=6, help="timed steps per system (alternated)")
    p.add_argument("--channels-last", action="store_true", help="add channels_last rows")
    p.add_argument("--compile", action="store_true", help="add torch.compile rows (slow to compile)")
    p.add_argument("--profile", action="store_true", help="print the top operators of a training step")
    p.add_argument("--vector", action="store_true",
                   help="also time the toys' RealNVP: AdamW vs fused AdamW")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="off", choices=["off", "bf16"],
                   help="bfloat16 autocast for every system alike (CUDA, or a CPU with AMX / AVX512-BF16)")
    p.add_argument("--clock", default=None, choices=["cpu", "wall"],
                   help="default: cpu on a CPU, wall on CUDA")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*torch.lu is deprecated.*")
    cuda = torch.device(args.device).type == "cuda"
    clock_name = args.clock or ("wall" if cuda else "cpu")
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    if not peers.available("normflows"):
        print("normflows is not installed: pip install -r benchmarks/requirements-peers.txt")
        return
    x, source = load_data(max(args.train_batch, 256))
    runs = [System(name, make, before, x, args)
            for name, (make, before) in systems(args.channels_last, args.compile).items()]
    failed = []
    for s in runs:  # warm-up (and compilation) before any timing
        try:
            for _ in range(args.warmup):
                s.train_step(args.train_batch)
                s.sample(args.sample_batch)
        except Exception as exc:  # noqa: BLE001 - e.g. torch.compile failing: report it, time the others
            failed.append(f"{s.name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    runs = [s for s in runs if not any(f.startswith(s.name + ":") for f in failed)]
    for _ in range(args.rounds):  # alternate: one step of each system per round
        for s in runs:
            s.train_times.append(timed(lambda s=s: s.train_step(args.train_batch), clock, cuda))
        for s in runs:
            s.sample_times.append(timed(lambda s=s: s.sample(args.sample_batch), clock, cuda))

    def rate(times: list[float], n: int) -> float:
        return n / statistics.median(times)

    ref = next(s for s in runs if s.name == NORMFLOWS)
    ref_train, ref_sample = rate(ref.train_times, args.train_batch), rate(ref.sample_times, args.sample_batch)
    by_name = {s.name: s for s in runs}

    def vs_before(s: System, times: str, n: int) -> str:
        before = by_name.get(s.before) if s.before else None
        if before is None:
            return "-"
        return f"{rate(getattr(s, times), n) / rate(getattr(before, times), n):.2f}"

    print(f"Glow on 1x32x32 (MNIST padded; data: {source}), {SCALES} scales x {DEPTH} steps, {HIDDEN} "
          f"hidden channels; {args.device}, amp {args.amp}, {torch.get_num_threads()} torch thread(s), "
          f"{clock_name} clock; "
          f"training batch {args.train_batch}, sampling batch {args.sample_batch}; median of {args.rounds} "
          f"alternated rounds after {args.warmup} warm-up steps.\n")
    print("| system | params | train img/s | vs normflows | vs before | sample img/s | vs normflows "
          "| vs before |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in runs:
        tr, sa = rate(s.train_times, args.train_batch), rate(s.sample_times, args.sample_batch)
        print(f"| {s.name} | {count_parameters(s.model):,} | {tr:.1f} | {tr / ref_train:.2f} | "
              f"{vs_before(s, 'train_times', args.train_batch)} | {sa:.1f} | {sa / ref_sample:.2f} | "
              f"{vs_before(s, 'sample_times', args.sample_batch)} |")
    pairs = [f"{s.name} vs {s.before}" for s in runs if s.before in by_name]
    if pairs:
        print("\nBefore / after pairs (the \"vs before\" columns): " + "; ".join(pairs) + ". "
              "The optimiser does not touch sampling: the sampling ratio of the fused AdamW row shows the "
              "noise of the measurement.")
    if NO_LU_CACHE in by_name and GLOW_SPLIT in by_name:
        gain = rate(by_name[GLOW_SPLIT].sample_times, args.sample_batch) / rate(
            by_name[NO_LU_CACHE].sample_times, args.sample_batch)
        print(f"\nThe eval-mode cache of the LU 1x1 convolutions (W, W^-1 and log|det W| built once from "
              f"the LU factors, then reused while the weights do not change): sampling {gain:.2f}x the "
              f"same model rebuilding them at every call (`{NO_LU_CACHE}`). Its training column is the "
              f"same model as `{GLOW_SPLIT}` (training always rebuilds them: the gradient needs the graph).")
    for f in failed:
        print(f"\nLeft out, failed during warm-up: {f}")
    if args.rounds > 1:
        spread = max(statistics.stdev(s.train_times) / statistics.mean(s.train_times) for s in runs)
        print(f"\nLargest relative spread (std / mean) of a system's training-step times: {spread:.0%}.")
    if args.vector:
        vector_table(args, clock)
    if args.profile and not cuda:
        for name in (GLOW_SPLIT, NORMFLOWS):
            s = next((r for r in runs if r.name == name), None)
            if s is None:
                continue
            print(f"\nTop operators (self CPU time) of 2 training steps, {name}:\n```\n"
                  f"{profile_step(s, args.train_batch)}```")
    if not math.isfinite(ref_train):
        raise SystemExit("no timing")


if __name__ == "__main__":
    main()
