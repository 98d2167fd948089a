"""Adapters that give the peer flow libraries (zuko, nflows, normflows) one interface, for the benchmarks.

Never imported by flowlib, the lectures or the tests: the peers are benchmark-only dependencies
(``benchmarks/requirements-peers.txt``). Every model built here is an ``nn.Module`` with

- ``log_prob(x)``: log-density in nats per row, shape (batch,);
- ``sample(n)``: n draws (vectors) or n continuous images in [0, 1] (images);

so the benchmarks train and score flowlib and its peers with the same loop and the same metrics.

Vector models (2D toys). Each family is built at a chosen depth, and its hidden width is then
searched (:func:`match_width`) so that its parameter count is as close as possible to a target:
the comparison is at EQUAL parameter counts. Each library keeps its own defaults otherwise
(activation, conditioner type), as a user of that library would get them. The peers get a fixed
standardisation of the data (mean and std of 8192 samples), as zuko's documentation recommends
for its splines and as flowlib's ActNorm does with its data-dependent initialisation, so that the
comparison is about the flows and not about preprocessing.

Image models (8x8 digits, MNIST size). :func:`normflows_glow` builds normflows' multi-scale Glow
(Kingma & Dhariwal, 2018) the way its Glow example does, wrapped by :class:`NormflowsImageModel`
with the same dequantisation (uniform noise, K levels) and logit preprocessing (alpha = 0.05) as
:class:`flowlib.image_models.ImageFlowModel`, so the bits/dim are on the same scale.
"""

from __future__ import annotations

import importlib.metadata
import math
import multiprocessing
import sys
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from flowlib.models import glow_vector, maf, nsf, realnvp_vector

PEERS = ("zuko", "nflows", "normflows")

# normflows' LU layers call the deprecated torch.lu: a warning per model, not a problem here.
warnings.filterwarnings("ignore", message=".*torch.lu is deprecated.*")


def versions() -> dict[str, str]:
    """Installed versions of torch, numpy, flowlib and the peers ("missing" when not installed)."""
    out = {}
    for name in ("torch", "numpy", "flowlib", *PEERS):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def run_tasks(task_fn: Callable, tasks: list, jobs: int, threads: int, cost: Callable,
              label: Callable) -> dict:
    """``{key: result}`` of ``task_fn(task) -> (key, result, wall seconds)`` over independent tasks.

    ``jobs`` <= 1: one after the other in this process, in the given order. Otherwise in ``jobs``
    worker processes ("spawn" context, ``threads`` torch threads each), the costliest tasks
    (``cost(task)``) first so that the workers finish close together. ``task_fn`` must be a
    module-level function (it is pickled by name). A line per finished task goes to stderr,
    labelled ``label(key)``.
    """
    results = {}

    def done(key: object, result: object, wall: float) -> None:
        results[key] = result
        print(f"  {label(key)}: done in {wall:.0f} s wall", file=sys.stderr, flush=True)

    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            done(*task_fn(task))
        return results
    ctx = multiprocessing.get_context("spawn")
    ordered = sorted(tasks, key=lambda t: -cost(t))
    with ctx.Pool(min(jobs, len(tasks)), initializer=_set_threads, initargs=(threads,)) as pool:
        for out in pool.imap_unordered(task_fn, ordered):
            done(*out)
    return results


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -- vector models ----------------------------------------------------------------------------
class Standardized(nn.Module):
    """p_X(x) = p_U((x - mean) / std) / prod(std): a fixed affine map in front of a peer's density."""

    def __init__(self, inner: nn.Module, log_prob: Callable[[Tensor], Tensor],
                 sample: Callable[[int], Tensor], data: Tensor) -> None:
        super().__init__()
        self.inner = inner
        self._log_prob, self._sample = log_prob, sample
        self.register_buffer("mean", data.mean(0))
        self.register_buffer("std", data.std(0))

    def log_prob(self, x: Tensor) -> Tensor:
        return self._log_prob((x - self.mean) / self.std) - torch.log(self.std).sum()

    def sample(self, n: int) -> Tensor:
        return self._sample(n) * self.std + self.mean


def _zuko(kind: str, dim: int, depth: int, hidden: int, data: Tensor) -> nn.Module:
    import zuko

    cls = {"maf": zuko.flows.MAF, "nsf": zuko.flows.NSF}[kind]
    flow = cls(dim, transforms=depth, hidden_features=(hidden, hidden))
    return Standardized(flow, lambda x: flow().log_prob(x), lambda n: flow().sample((n,)), data)


def _nflows(kind: str, dim: int, depth: int, hidden: int, data: Tensor) -> nn.Module:
    from nflows.distributions.normal import StandardNormal as NStandardNormal
    from nflows.flows import Flow as NFlow
    from nflows.flows import MaskedAutoregressiveFlow, SimpleRealNVP
    from nflows.nn.nets import ResidualNet
    from nflows.transforms import CompositeTransform, PiecewiseRationalQuadraticCouplingTransform

    if kind == "maf":
        flow = MaskedAutoregressiveFlow(dim, hidden_features=hidden, num_layers=depth, num_blocks_per_layer=2)
    elif kind == "realnvp":
        flow = SimpleRealNVP(dim, hidden_features=hidden, num_layers=depth, num_blocks_per_layer=2)
    else:  # neural spline flow, coupling version (Durkan et al., 2019), linear tails outside [-5, 5]
        def net(i: int, o: int) -> nn.Module:
            return ResidualNet(i, o, hidden_features=hidden, num_blocks=2)

        transforms = []
        for k in range(depth):
            mask = torch.ones(dim)
            mask[k % 2::2] = -1
            transforms.append(PiecewiseRationalQuadraticCouplingTransform(
                mask, net, num_bins=8, tails="linear", tail_bound=5.0))
        flow = NFlow(CompositeTransform(transforms), NStandardNormal([dim]))
    return Standardized(flow, flow.log_prob, flow.sample, data)


def _normflows(kind: str, dim: int, depth: int, hidden: int, data: Tensor) -> nn.Module:
    import normflows as nf

    flows = []
    if kind == "realnvp":  # as normflows' README: masked affine couplings with MLPs, ActNorm between
        b = (torch.arange(dim) % 2 == 0).float()
        for k in range(depth):
            s = nf.nets.MLP([dim, hidden, hidden, dim], init_zeros=True)
            t = nf.nets.MLP([dim, hidden, hidden, dim], init_zeros=True)
            flows += [nf.flows.MaskedAffineFlow(b if k % 2 == 0 else 1 - b, t, s), nf.flows.ActNorm(dim)]
    else:  # neural spline flow: spline couplings and LU-linear permutations, as normflows' README
        for _ in range(depth):
            flows += [nf.flows.CoupledRationalQuadraticSpline(dim, 2, hidden, tail_bound=5.0),
                      nf.flows.LULinearPermute(dim)]
    flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)
    return Standardized(flow, flow.log_prob, lambda n: flow.sample(n)[0], data)


def _flowlib(kind: str, dim: int, depth: int, hidden: int, data: Tensor) -> nn.Module:
    """flowlib's own builders: ``realnvp_vector`` (affine couplings that slice the vector),
    ``glow_vector`` (ActNorm, LU linear map, affine coupling), ``maf`` (affine MADE layers) and
    ``nsf`` (rational-quadratic splines in couplings, or in MADE layers: ``nsf-ar``)."""
    if kind == "realnvp":
        return realnvp_vector(dim, couplings=depth, hidden=hidden, layers=2)
    if kind == "maf":
        return maf(dim, layers=depth, hidden=hidden, made_layers=2)
    if kind == "nsf":
        return nsf(dim, structure="coupling", layers=depth, hidden=hidden, mlp_layers=2)
    if kind == "nsf-ar":
        return nsf(dim, structure="autoregressive", layers=depth, hidden=hidden, mlp_layers=2)
    return glow_vector(dim, couplings=depth, hidden=hidden, layers=2)


#: name -> (library, builder, kind, family); the family picks the depth (affine or spline).
VECTOR_SYSTEMS: dict[str, tuple[str, Callable[..., nn.Module], str, str]] = {
    "flowlib RealNVP": ("flowlib", _flowlib, "realnvp", "affine"),
    "flowlib Glow": ("flowlib", _flowlib, "glow", "affine"),
    "flowlib MAF": ("flowlib", _flowlib, "maf", "affine"),
    "flowlib NSF": ("flowlib", _flowlib, "nsf", "spline"),
    "flowlib NSF (AR)": ("flowlib", _flowlib, "nsf-ar", "spline"),
    "zuko MAF": ("zuko", _zuko, "maf", "affine"),
    "zuko NSF": ("zuko", _zuko, "nsf", "spline"),
    "nflows RealNVP": ("nflows", _nflows, "realnvp", "affine"),
    "nflows MAF": ("nflows", _nflows, "maf", "affine"),
    "nflows NSF": ("nflows", _nflows, "nsf", "spline"),
    "normflows RealNVP": ("normflows", _normflows, "realnvp", "affine"),
    "normflows NSF": ("normflows", _normflows, "nsf", "spline"),
}


def available(library: str) -> bool:
    if library == "flowlib":
        return True
    try:
        __import__(library)
    except ImportError:
        return False
    return True


def parse_names(text: str, known: Sequence[str]) -> list[str]:
    """The system names in a comma-separated list, where a name may itself contain commas.

    ``"flowlib RealNVP,flowlib RealNVP, masked coupling (before)"`` gives the two names: the pieces
    between commas are joined back, longest known name first. Unknown pieces are kept as they
    are (the caller reports them); spaces around the commas do not matter.
    """
    def norm(name: str) -> str:
        return ",".join(part.strip() for part in name.split(","))

    table = {norm(k): k for k in known}
    pieces = [part.strip() for part in text.split(",")]
    out, i = [], 0
    while i < len(pieces):
        if not pieces[i]:
            i += 1
            continue
        for j in range(len(pieces), i, -1):
            joined = ",".join(pieces[i:j])
            if joined in table:
                out.append(table[joined])
                i = j
                break
        else:
            out.append(pieces[i])
            i += 1
    return out


def build_vector(name: str, dim: int, depth: int, hidden: int, data: Tensor) -> nn.Module:
    """The system ``name`` of :data:`VECTOR_SYSTEMS` at the given depth and hidden width."""
    _, builder, kind, _ = VECTOR_SYSTEMS[name]
    return builder(kind, dim, depth, hidden, data)


def match_width(build: Callable[[int], nn.Module], target: int, low: int = 2, high: int = 2048) -> int:
    """The hidden width whose model has the parameter count closest to ``target`` (counts grow with width)."""
    def n(h: int) -> int:
        return count_parameters(build(h))

    while high - low > 1:  # bisection for the last width with at most target parameters
        mid = (low + high) // 2
        if n(mid) <= target:
            low = mid
        else:
            high = mid
    return min((low, high), key=lambda h: abs(n(h) - target))


# -- image models (normflows' Glow) ----------------------------------------------------------
def normflows_glow(shape: tuple[int, int, int], levels: int, steps: int, hidden: int,
                   alpha: float = 0.05) -> nn.Module:
    """normflows' multi-scale Glow for (C, H, W) images in [0, 1], as in normflows' Glow example.

    Per level ``steps`` GlowBlocks (affine coupling with a conv3x3-conv1x1-conv3x3 network of
    ``hidden`` channels and sigmoid scales, LU 1x1 convolution, ActNorm), a learned diagonal
    Gaussian base per level (GlowBase) and the logit transform in front.
    """
    import normflows as nf

    c, h, w = shape
    q0, merges, flows = [], [], []
    for i in range(levels):  # i = 0 is the coarsest level (normflows lists the generative direction)
        blocks = [nf.flows.GlowBlock(c * 2 ** (levels + 1 - i), hidden, split_mode="channel", scale=True)
                  for _ in range(steps)]
        flows.append([*blocks, nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (c * 2 ** (levels - i), h // 2 ** (levels - i), w // 2 ** (levels - i))
        else:
            latent = (c * 2 ** (levels + 1), h // 2 ** levels, w // 2 ** levels)
        q0.append(nf.distributions.GlowBase(latent))
    return nf.MultiscaleFlow(q0, flows, merges, transform=nf.transforms.Logit(alpha), class_cond=False)


class NormflowsImageModel(nn.Module):
    """normflows' Glow with flowlib's discrete-data door: uniform dequantisation of K levels.

        log P(x) >= log p_Y((x + u) / K) - D log K,   u ~ U[0, 1)^D

    the convention of :class:`flowlib.image_models.ImageFlowModel` (one draw per call), so that
    ``bits_per_dim`` figures of both libraries are comparable.
    """

    def __init__(self, flow: nn.Module, shape: tuple[int, int, int], levels: int) -> None:
        super().__init__()
        self.flow, self.shape, self.levels = flow, tuple(shape), int(levels)
        self.dim = math.prod(shape)

    def log_prob(self, x: Tensor) -> Tensor:
        y = (x.float() + torch.rand_like(x, dtype=torch.float32)) / self.levels
        return self.flow.log_prob(y, None) - self.dim * math.log(self.levels)

    def bits_per_dim(self, x: Tensor, samples: int = 1) -> Tensor:
        draws = torch.stack([self.log_prob(x) for _ in range(samples)])
        return -(torch.logsumexp(draws, 0) - math.log(samples)) / (self.dim * math.log(2))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """ActNorm's data-dependent start, on this batch (normflows initialises on the first batch)."""
        self.log_prob(x)

    @torch.no_grad()
    def sample(self, n: int, temperature: float | None = None) -> Tensor:
        return self.flow.sample(n, temperature=temperature)[0]
