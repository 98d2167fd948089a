"""Memory and time of a training step: plain autograd versus memory-saving backprop.

A RealNVP-like stack (affine couplings with MLP conditioners, alternating half masks) is
trained on vectors with ``Compose`` (autograd keeps every activation) and with
``MemorySavingCompose`` (activations recomputed from the inverse, Gomez et al., 2017). Both
run over the same modules, side by side, at several depths, and the table reports

- saved MiB: the distinct storages autograd keeps between forward and backward, counted
  with ``torch.autograd.graph.saved_tensors_hooks`` (works on any device). The
  memory-saving backward holds, in addition, one layer's graph at a time (about the
  plain figure divided by the depth) while it recomputes that layer;
- peak MiB (CUDA only): ``torch.cuda.max_memory_allocated`` over a whole training step,
  above what was allocated before it (parameters, data, optimiser state);
- ms/step: the median wall time of zero_grad + forward + backward + Adam step;
- the variants: ``plain``; ``generic`` (every layer undone by its inverse, then redone with
  gradients: two conditioner calls per coupling in the backward); ``saving`` (today's
  default: a sliced coupling undone and redone with one conditioner call);
- max grad diff: the largest |gradient difference| relative to the largest gradient,
  a check that both backprops compute the same thing.

Usage::

    python benchmarks/reversible_memory.py               # CPU default, well under 2 minutes
    python benchmarks/reversible_memory.py --device cuda --batch 65536
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from flowlib.core import Compose, Flow, FlowModel
from flowlib.coupling import AffineCoupling, Coupling, half_mask
from flowlib.distributions import StandardNormal
from flowlib.nets import MLP
from flowlib.reversible import MemorySavingCompose
from flowlib.transformers import Affine

MIB = 2.0**20


def realnvp_layers(depth: int, dim: int, hidden: int, seed: int) -> list[Flow]:
    torch.manual_seed(seed)  # nn.Linear draws its initial weights from the global generator
    layers: list[Flow] = []
    for k in range(depth):
        mask = half_mask(dim, k % 2)
        # The layer slices its vector: the conditioner reads the kept half, dim / 2 entries.
        net = MLP(*Coupling.conditioner_sizes(mask, Affine), hidden=hidden, layers=2)
        with torch.no_grad():  # a small move away from the identity, as after some training
            net.last.weight.normal_(0.0, 0.01)
        layers.append(AffineCoupling(mask, net))
    return layers


def loss_of(model: FlowModel, x: torch.Tensor) -> torch.Tensor:
    return -model.log_prob(x).mean()


def saved_bytes_and_grads(model: FlowModel, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Bytes autograd saves for one step's backward, and that step's gradients (flattened)."""
    model.zero_grad(set_to_none=True)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_of(model, x)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    return sum(storages.values()), grads


def cuda_peak_bytes(model: FlowModel, x: torch.Tensor) -> int:
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss_of(model, x).backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    model.zero_grad(set_to_none=True)
    return peak


def step_ms(model: FlowModel, opt: torch.optim.Optimizer, x: torch.Tensor, steps: int) -> float:
    times = []
    for i in range(steps + 1):
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_of(model, x).backward()
        opt.step()
        if x.is_cuda:
            torch.cuda.synchronize()
        if i > 0:  # the first step warms up allocator and kernels
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per variant")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    x = torch.randn(args.batch, args.dim, generator=torch.Generator().manual_seed(0)).to(device)
    act_mib = x.numel() * x.element_size() / MIB
    print(f"RealNVP-like stack: sliced affine couplings, MLP conditioners ({args.dim // 2} -> "
          f"{args.hidden} -> {args.hidden} -> {args.dim}), batch {args.batch}, {device}, "
          f"{torch.get_num_threads()} CPU threads; one activation = {act_mib:.1f} MiB")
    head = f"{'depth':>5} {'variant':>8} {'saved MiB':>10} {'ratio':>6}"
    head += f" {'peak MiB':>9} {'ratio':>6}" if cuda else ""
    head += f" {'ms/step':>9} {'ratio':>6} {'max grad diff':>14}"
    print(head)
    print("-" * len(head))
    for depth in args.depths:
        layers = realnvp_layers(depth, args.dim, args.hidden, seed=depth)
        base = StandardNormal(args.dim)
        # The same modules under both compositions: identical parameters, side by side.
        generic = MemorySavingCompose(*layers)
        generic.one_call_couplings = False  # before: every layer undone, then redone (2 conditioner calls)
        models = {
            "plain": FlowModel(Compose(*layers), base).to(device).train(),
            "generic": FlowModel(generic, base).to(device).train(),
            "saving": FlowModel(MemorySavingCompose(*layers), base).to(device).train(),
        }
        rows, grads = {}, {}
        for name, model in models.items():
            saved, grads[name] = saved_bytes_and_grads(model, x)
            row = {"saved": saved / MIB}
            if cuda:
                row["peak"] = cuda_peak_bytes(model, x) / MIB
            # lr = 0: the timing is of a full Adam step but the two variants keep sharing
            # exactly the same parameters at every depth.
            opt = torch.optim.Adam(model.parameters(), lr=0.0)
            row["ms"] = step_ms(model, opt, x, args.steps)
            rows[name] = row
        grad_diff = {name: float((grads[name] - grads["plain"]).abs().max() / grads["plain"].abs().max())
                     for name in grads}
        for name in models:
            r, p = rows[name], rows["plain"]
            line = f"{depth:>5} {name:>8} {r['saved']:>10.1f} {r['saved'] / p['saved']:>6.3f}"
            if cuda:
                line += f" {r['peak']:>9.1f} {r['peak'] / p['peak']:>6.2f}"
            line += f" {r['ms']:>9.1f} {r['ms'] / p['ms']:>6.2f}"
            line += f" {grad_diff[name]:>14.1e}" if name != "plain" else f" {'':>14}"
            print(line)


if __name__ == "__main__":
    main()
