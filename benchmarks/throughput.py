"""Training and sampling throughput of a Glow at MNIST size: flowlib against normflows, side by side.

    python benchmarks/throughput.py                      # CPU, batch 32 (train) / 64 (sample)
    python benchmarks/throughput.py --device cuda --train-batch 256 --sample-batch 1024
    python benchmarks/throughput.py --profile            # + the top operators of one training step
    python benchmarks/throughput.py --compile            # + torch.compile rows (minutes of compiling)
    python benchmarks/throughput.py --vector             # + the toys' RealNVP: sliced coupling, fused Adam

The model: MNIST digits (1x28x28, 256 levels) padded to 1x32x32, a multi-scale Glow (Kingma &
Dhariwal, 2018) with 3 levels of 8 steps and 64 hidden channels in every conditioner. Rows:

- ``flowlib glow_image``: ``glow_image((1, 32, 32), levels=3, steps=8, hidden=64, blocks=1)``,
  flowlib's builder as the lectures use it (a ResNet conditioner: 3x3 conv in, one residual
  block of two 3x3 convs, zero 3x3 conv out);
- ``flowlib, Glow conditioner``: the same Glow built from flowlib's layers (ActNorm, LU 1x1
  convolution, AffineCoupling with a channel mask, split priors) but with Glow's own conditioner,
  conv3x3 -> ReLU -> conv1x1 -> ReLU -> zero conv3x3 (``flowlib.nets.ConvNet(layers=2)``), the
  one normflows uses: the like-for-like comparison of the two libraries' machinery;
- ``PROTOTYPE sliced coupling``: as the row above, but the coupling slices the channels instead
  of multiplying by a mask (:class:`SlicedChannelCoupling` below, a prototype for flowlib): the
  conditioner sees only the C/2 kept channels and outputs scale and shift for the C/2 others,
  so its first and last convolutions are half as wide, and the model has exactly normflows'
  architecture and (up to the priors) parameter count;
- ``normflows Glow``: normflows' GlowBlocks and GlowBase priors as its Glow example builds them;
- ``flowlib sliced + fused Adam``: the sliced prototype trained with ``Adam(fused=True)`` (one
  kernel for all parameters instead of torch's default per-parameter loop on a CPU);
- with ``--channels-last``: the two last rows again with ``torch.channels_last`` tensors;
- with ``--compile``: the two last rows with the loss (and the sampler) under ``torch.compile``.

Protocol: every system gets ``--warmup`` untimed steps, then ``--rounds`` rounds in which each
system does one timed training step (forward, backward, Adam step) in turn, so that the load of
a shared machine falls on all of them alike; the figure is the median over rounds (CPU time of
this process with ``--clock cpu``, the default on a CPU; wall time, with CUDA synchronisation,
on a GPU). Sampling likewise: eval mode, no gradient, ``model.sample(n)`` at temperature 1.
The ratio column is images/s of the row divided by images/s of normflows (> 1: faster).
Prints a markdown table.
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

from flowlib.actnorm import ActNorm  # noqa: E402
from flowlib.convnets import ResNetConditioner  # noqa: E402
from flowlib.core import Compose, Flow, FlowInputError, sum_except_batch  # noqa: E402
from flowlib.coupling import AffineCoupling, channel_mask, soft_clamp  # noqa: E402
from flowlib.data.images import DatasetError, load_mnist, pad_to  # noqa: E402
from flowlib.dequantize import LogitPreprocess  # noqa: E402
from flowlib.distributions import StandardNormal  # noqa: E402
from flowlib.image_models import ImageFlowModel, count_parameters, glow_image  # noqa: E402
from flowlib.linear import InvertibleLinearLU  # noqa: E402
from flowlib.multiscale import MultiScale  # noqa: E402
from flowlib.nets import ConvNet  # noqa: E402

SHAPE = (1, 32, 32)
LEVELS, STEPS, HIDDEN = 3, 8, 64


# -- PROTOTYPE (not flowlib): a channel coupling that slices instead of masking --------------------
class SlicedChannelCoupling(Flow):
    """PROTOTYPE of an affine coupling over channels that slices rather than masks (Dinh et al., 2017).

        x = (x_a, x_b) along channels,   (s_raw, t) = NN(x_a),   s = soft_clamp(s_raw)
        z = (x_a, x_b * exp(s) + t),     log|det dz/dx| = sum s

    Same map as ``AffineCoupling(channel_mask(C, H, W, parity), ...)`` when the network is given
    the same weights on the kept channels, but the network's input is x_a (C/2 channels, not the
    masked C) and its output is (s, t) for x_b only (2 * C/2 channels, not 2C of which half are
    thrown away): the first and last convolutions of the conditioner cost half as much, and the
    mask multiplications disappear. Parity 0 keeps the first C//2 channels, parity 1 the others,
    as :func:`flowlib.coupling.channel_mask`.
    """

    # A benchmark prototype: kept out of flowlib's registry of layers (and so of its test harness).
    abstract = True

    def __init__(self, channels: int, parity: int, conditioner: nn.Module, clamp: float | None = 2.0) -> None:
        if channels < 2 or parity not in (0, 1):
            raise FlowInputError(f"SlicedChannelCoupling: expected channels >= 2 and parity 0 or 1, got "
                                 f"{channels}, {parity}")
        super().__init__(None)
        self.channels, self.parity, self.clamp = channels, parity, clamp
        self.split = channels // 2
        self.conditioner = conditioner

    @staticmethod
    def sizes(channels: int, parity: int) -> tuple[int, int]:
        """(kept, transformed) channel counts: the conditioner maps kept -> 2 * transformed channels."""
        first, second = channels // 2, channels - channels // 2
        return (first, second) if parity == 0 else (second, first)

    def _halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a, b = x[:, :self.split], x[:, self.split:]
        return (a, b) if self.parity == 0 else (b, a)

    def _join(self, kept: Tensor, moved: Tensor) -> Tensor:
        return torch.cat([kept, moved] if self.parity == 0 else [moved, kept], dim=1)

    def _scale_shift(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        s_raw, t = self.conditioner(kept).chunk(2, dim=1)
        return soft_clamp(s_raw, self.clamp), t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        kept, free = self._halves(x)
        s, t = self._scale_shift(kept)
        return self._join(kept, free * torch.exp(s) + t), sum_except_batch(s)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        kept, free = self._halves(z)
        s, t = self._scale_shift(kept)
        return self._join(kept, (free - t) * torch.exp(-s)), -sum_except_batch(s)


def flowlib_glow(sliced: bool, shape: tuple[int, int, int] = SHAPE, levels: int = LEVELS, steps: int = STEPS,
                 hidden: int = HIDDEN, bins: int = 256) -> ImageFlowModel:
    """A Glow from flowlib's layers with Glow's conditioner (conv3x3-ReLU-conv1x1-ReLU-zero conv3x3).

    ``sliced=False``: flowlib's AffineCoupling with a channel mask (the conditioner maps C -> 2C
    channels); ``sliced=True``: the :class:`SlicedChannelCoupling` prototype (C/2 -> C).
    """
    level_steps = []
    for c, h, w in MultiScale.level_shapes(shape, levels):
        flows: list[Flow] = []
        for k in range(steps):
            parity = k % 2
            if sliced:
                kept, moved = SlicedChannelCoupling.sizes(c, parity)
                net = ConvNet(kept, 2 * moved, hidden=hidden, layers=2, activation=nn.ReLU)
                coupling: Flow = SlicedChannelCoupling(c, parity, net, clamp=2.0)
            else:
                net = ConvNet(c, 2 * c, hidden=hidden, layers=2, activation=nn.ReLU)
                coupling = AffineCoupling(channel_mask(c, h, w, parity), net, clamp=2.0)
            flows += [ActNorm(c), InvertibleLinearLU(c), coupling]
        level_steps.append(flows)
    flow = Compose(LogitPreprocess(0.05), MultiScale(shape, level_steps, split_prior=True))
    return ImageFlowModel(flow, StandardNormal(shape), levels=bins)


def sliced_glow_image(shape: tuple[int, int, int], levels: int = 2, steps: int = 4, hidden: int = 64,
                      blocks: int = 2, bins: int = 256, clamp: float = 2.0) -> ImageFlowModel:
    """PROTOTYPE: ``flowlib.image_models.glow_image`` with :class:`SlicedChannelCoupling` in place of the
    masked AffineCoupling (ResNet conditioners C/2 -> C channels instead of C -> 2C); all else equal."""
    level_steps = []
    for c, _, _ in MultiScale.level_shapes(shape, levels):
        flows: list[Flow] = []
        for k in range(steps):
            kept, moved = SlicedChannelCoupling.sizes(c, k % 2)
            net = ResNetConditioner(kept, 2 * moved, hidden, blocks)
            flows += [ActNorm(c), InvertibleLinearLU(c), SlicedChannelCoupling(c, k % 2, net, clamp)]
        level_steps.append(flows)
    flow = Compose(LogitPreprocess(0.05), MultiScale(shape, level_steps, split_prior=True))
    return ImageFlowModel(flow, StandardNormal(shape), levels=bins)


def systems(channels_last: bool, compiled: bool) -> dict[str, Callable[[], nn.Module]]:
    """Row name -> model builder; a row's name says its options (channels_last, torch.compile, fused)."""
    out: dict[str, Callable[[], nn.Module]] = {
        "flowlib glow_image (ResNet, blocks=1)": lambda: glow_image(SHAPE, levels=LEVELS, steps=STEPS,
                                                                    hidden=HIDDEN, blocks=1, bins=256),
        "flowlib, Glow conditioner (masked coupling)": lambda: flowlib_glow(False),
        "PROTOTYPE flowlib, sliced coupling": lambda: flowlib_glow(True),
        "normflows Glow": lambda: peers.NormflowsImageModel(
            peers.normflows_glow(SHAPE, LEVELS, STEPS, HIDDEN), SHAPE, 256),
    }
    pairs = [("PROTOTYPE flowlib, sliced coupling", "flowlib sliced"), ("normflows Glow", "normflows")]
    out["flowlib sliced + fused Adam"] = out["PROTOTYPE flowlib, sliced coupling"]
    if channels_last:
        for key, short in pairs:
            out[f"{short} + channels_last"] = out[key]
    if compiled:
        for key, short in pairs:
            out[f"{short} + torch.compile"] = out[key]
    return out


def load_data(n: int) -> tuple[Tensor, str]:
    """n MNIST training images padded to 32x32 as float levels, or random levels when MNIST is absent."""
    try:
        x = load_mnist("train", download=False)[0][:n]
        return pad_to(x, 32).float(), "MNIST"
    except DatasetError:
        return torch.randint(0, 256, (n, *SHAPE)).float(), "random levels (MNIST not found)"


class System:
    def __init__(self, name: str, make: Callable[[], nn.Module], x: Tensor, args: argparse.Namespace) -> None:
        torch.manual_seed(args.seed)
        self.name = name
        self.model = make().to(args.device)
        self.channels_last = "channels_last" in name
        self.x = x.to(args.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.model.train()
        with torch.no_grad():
            self.model.log_prob(self.x)  # ActNorm's data-dependent initialisation
        # Adam as torch makes it by default on a CPU (a loop over the parameters), or its fused kernel.
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-5, fused="fused Adam" in name or None)
        self.loss = lambda x: self.model.bits_per_dim(x).mean()
        self.sampler = self.model.sample
        if "torch.compile" in name:
            self.loss = torch.compile(self.loss)
            self.sampler = torch.compile(self.sampler)
        self.train_times: list[float] = []
        self.sample_times: list[float] = []

    def train_step(self, n: int) -> None:
        self.model.train()
        loss = self.loss(self.x[:n])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    @torch.no_grad()
    def sample(self, n: int) -> None:
        self.model.eval()
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
    """Training steps/s of the toys' RealNVP (d = 2, 12 couplings x 64 units, batch 512): flowlib's masked
    coupling vs the sliced prototype (peers.sliced_realnvp), each with torch's default Adam and fused Adam."""
    from flowlib.models import realnvp

    x = torch.randn(512, 2, generator=torch.Generator().manual_seed(args.seed)).to(args.device)
    rows = {}
    for model_name, make in (("flowlib realnvp (masked coupling)", lambda: realnvp(2)),
                             ("PROTOTYPE sliced coupling", lambda: peers.sliced_realnvp(2))):
        for fused in (False, True):
            torch.manual_seed(args.seed)
            model = make().to(args.device)
            model.train()
            with torch.no_grad():
                model.log_prob(x)
            opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=fused or None)
            rows[f"{model_name}, {'fused Adam' if fused else 'Adam (default)'}"] = (model, opt, [])

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
          f"median of {rounds} alternated rounds:\n")
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
                   help="also time the toys' RealNVP: masked vs sliced coupling, Adam vs fused Adam")
    p.add_argument("--device", default="cpu")
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
    runs = [System(name, make, x, args) for name, make in systems(args.channels_last, args.compile).items()]
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

    ref = next(s for s in runs if s.name == "normflows Glow")
    ref_train, ref_sample = rate(ref.train_times, args.train_batch), rate(ref.sample_times, args.sample_batch)
    print(f"Glow on 1x32x32 (MNIST padded; data: {source}), {LEVELS} levels x {STEPS} steps, {HIDDEN} "
          f"hidden channels; {args.device}, {torch.get_num_threads()} torch thread(s), {clock_name} clock; "
          f"training batch {args.train_batch}, sampling batch {args.sample_batch}; median of {args.rounds} "
          f"alternated rounds after {args.warmup} warm-up steps.\n")
    print("| system | params | train img/s | vs normflows | sample img/s | vs normflows |")
    print("|---|---:|---:|---:|---:|---:|")
    for s in runs:
        tr, sa = rate(s.train_times, args.train_batch), rate(s.sample_times, args.sample_batch)
        print(f"| {s.name} | {count_parameters(s.model):,} | {tr:.1f} | {tr / ref_train:.2f} | {sa:.1f} | "
              f"{sa / ref_sample:.2f} |")
    for f in failed:
        print(f"\nLeft out, failed during warm-up: {f}")
    spread = max(statistics.stdev(s.train_times) / statistics.mean(s.train_times) for s in runs)
    print(f"\nLargest relative spread (std / mean) of a system's training-step times: {spread:.0%}.")
    if args.vector:
        vector_table(args, clock)
    if args.profile and not cuda:
        for name in ("PROTOTYPE flowlib, sliced coupling", "normflows Glow"):
            s = next(r for r in runs if r.name == name)
            print(f"\nTop operators (self CPU time) of 2 training steps, {name}:\n```\n"
                  f"{profile_step(s, args.train_batch)}```")
    if not math.isfinite(ref_train):
        raise SystemExit("no timing")


if __name__ == "__main__":
    main()
