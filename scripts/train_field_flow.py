"""Train Glow on simulated weak-lensing convergence maps and write it as a loadable file.

    python scripts/train_field_flow.py --minutes 12 --out flowlib/checkpoints/glow_lensing.pt
    python scripts/train_field_flow.py --minutes 12 --augment \
        --out flowlib/checkpoints/glow_lensing_augmented.pt
    python scripts/train_field_flow.py --minutes 27 --conditional --maps 4000 --augment \
        --out flowlib/checkpoints/glow_lensing_theta.pt

(the shipped files' exact commands are in flowlib/checkpoints/README.md; lecture 9 uses them)

The maps come from :func:`flowlib.data.lensing.convergence_maps`, simulated here (no download):

- a fixed **training suite** of ``--maps`` maps (seed ``--seed``), at sigma_8 = 0.8 and
  Omega_m = 0.3, or with ``--conditional`` one parameter pair per map drawn uniformly from the
  prior box sigma_8 in [0.6, 1.0], Omega_m in [0.2, 0.4] (the model is then p(x | theta), the
  parameters rescaled to [-1, 1] as its context: :func:`flowlib.field_models.theta_context`);
- ``--augment``: the suite enlarged by the 8 symmetries of the square (rotations by 90 degrees and
  reflections), which leave the statistics of an isotropic periodic field unchanged; the mitigation
  that Armijo, Thiele & Liu (2026) measure against a flow's underestimated covariances, with noisy
  training fields (``--noise``, the per-pixel standard deviation of white shape noise added to the
  training and test maps alike);
- validation on 500 fresh maps and the test on ``--test-maps`` more (other seeds).

It trains :func:`flowlib.field_models.glow_field` with :func:`flowlib.train.fit` for ``--minutes``
(resumable from ``--state``, as ``scripts/train_image_flow.py``), then records the test
log-likelihood in nats per pixel and, from ``--test-maps`` samples at temperature 1 against as
many test maps, the ratios of the binned power spectrum's mean and standard deviation, and the
mean off-diagonal correlation of its bins for both: the covariance figure the lecture starts
from. The file is a ``flowlib.pretrained/1`` dictionary with the builder ``glow_field``, so
:func:`flowlib.pretrained.load_pretrained` rebuilds it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from flowlib import pretrained
from flowlib._integrity import with_checksum
from flowlib.data.lensing import convergence_maps
from flowlib.field_models import PRIOR_BOX, glow_field, theta_context
from flowlib.field_statistics import power_spectrum
from flowlib.image_models import count_parameters
from flowlib.train import fit, save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_image_flow import apply_overrides, hardware, update_readme  # noqa: E402  (one recipe for both scripts)

#: Sizes for a CPU; override any with --set KEY=VALUE.
DEFAULT_KWARGS: dict[str, Any] = {"scales": 2, "depth": 4, "hidden": 32, "blocks": 1}
SEEDS = {"val": 1001, "test": 1002, "samples": 1003}
README_START, README_END = "<!-- field-checkpoints:start -->", "<!-- field-checkpoints:end -->"
README_HEADER = (
    "| file | model | maps | test nats/pixel | spectrum mean / std ratio (samples / maps) | "
    "off-diagonal correlation (samples, maps) | parameters | steps | training time | command |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def simulate(
    n: int, size: int, seed: int, conditional: bool, noise: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n maps and, for the conditional model, their parameters (n, 2) drawn from the prior box."""
    g = torch.Generator().manual_seed(seed)
    theta = None
    if conditional:
        u = torch.rand(n, 2, generator=g, dtype=torch.float64)
        theta = torch.stack(
            [
                PRIOR_BOX[k][0] + (PRIOR_BOX[k][1] - PRIOR_BOX[k][0]) * u[:, i]
                for i, k in enumerate(("sigma_8", "omega_m"))
            ],
            dim=1,
        )
        maps = convergence_maps(n, size, sigma_8=theta[:, 0], omega_m=theta[:, 1], noise=noise, generator=g)
    else:
        maps = convergence_maps(n, size, noise=noise, generator=g)
    return maps, theta


def augment(maps: torch.Tensor) -> torch.Tensor:
    """The maps (n, 1, H, W) under the 8 symmetries of the square, (8n, 1, H, W), each symmetry a block."""
    turns = [torch.rot90(maps, k, dims=(2, 3)) for k in range(4)]
    return torch.cat(turns + [torch.flip(t, dims=(3,)) for t in turns])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--minutes", type=float, required=True, help="wall-clock training budget (over resumes)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--size", type=int, default=32, help="maps of SIZE x SIZE pixels")
    p.add_argument("--maps", type=int, default=2000, help="the training suite's size (before augmentation)")
    p.add_argument("--test-maps", type=int, default=1000)
    p.add_argument("--augment", action="store_true", help="add the 8 symmetries of the square of every map")
    p.add_argument("--noise", type=float, default=0.0, help="white shape noise per pixel (std), all maps")
    p.add_argument(
        "--conditional", action="store_true", help="p(x | sigma_8, Omega_m), parameters from the prior"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a glow_field argument"
    )
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument(
        "--state", type=Path, default=None, help="training state (default: runs/<out name>.fit.pt)"
    )
    p.add_argument("--fresh", action="store_true", help="ignore an existing training state")
    p.add_argument("--no-readme", action="store_true", help="do not touch the README beside --out")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def batched(fn, maps: torch.Tensor, context: torch.Tensor | None, size: int = 250) -> torch.Tensor:
    """fn(maps part, context part) over parts of ``size`` maps, concatenated (context may be None)."""
    parts = maps.split(size)
    contexts = context.split(size) if context is not None else [None] * len(parts)
    return torch.cat([fn(m, c) for m, c in zip(parts, contexts, strict=True)])


def spectrum_figures(samples: torch.Tensor, maps: torch.Tensor) -> dict[str, Any]:
    """Mean and std ratios of the binned spectrum, and each set's mean off-diagonal bin correlation."""
    _, ps = power_spectrum(samples, bins=6)
    _, pm = power_spectrum(maps, bins=6)
    off = ~torch.eye(6, dtype=torch.bool)
    return {
        "spectrum_mean_ratio": (ps.mean(0) / pm.mean(0)).tolist(),
        "spectrum_std_ratio": (ps.std(0) / pm.std(0)).tolist(),
        "offdiagonal_correlation_samples": float(torch.corrcoef(ps.T)[off].mean()),
        "offdiagonal_correlation_maps": float(torch.corrcoef(pm.T)[off].mean()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    shape = (1, args.size, args.size)
    kwargs: dict[str, Any] = {"shape": list(shape), **DEFAULT_KWARGS}
    if args.conditional:
        kwargs["context_shape"] = [2]
    apply_overrides(kwargs, args.set)
    splits = {
        "train": simulate(args.maps, args.size, args.seed, args.conditional, args.noise),
        "val": simulate(500, args.size, SEEDS["val"], args.conditional, args.noise),
        "test": simulate(args.test_maps, args.size, SEEDS["test"], args.conditional, args.noise),
    }
    if args.augment:
        maps, theta = splits["train"]
        splits["train"] = (augment(maps), None if theta is None else theta.repeat(8, 1))

    def data(name: str) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        maps, theta = splits[name]
        return maps if theta is None else (maps, theta_context(theta).float())

    torch.manual_seed(args.seed)
    model = glow_field(**kwargs)
    train_maps, train_theta = splits["train"]
    start_context = None if train_theta is None else theta_context(train_theta[:1024]).float()
    with torch.no_grad():  # ActNorm starts from a large batch (a resumed run loads its weights anyway)
        model.log_prob(train_maps[:1024], context=start_context)
    state = args.state or Path("runs") / f"{args.out.stem}.fit.pt"
    print(
        f"glow_field ({count_parameters(model)} parameters) on {len(splits['train'][0])} maps {shape}: "
        f"{args.minutes:g} min, training state {state}",
        flush=True,
    )
    result = fit(
        model,
        data("train"),
        val_data=data("val"),
        seconds=60.0 * args.minutes,
        batch_size=args.batch,
        lr=args.lr,
        warmup_steps=args.warmup,
        eval_every=args.eval_every,
        checkpoint=state,
        resume=not args.fresh,
        seed=args.seed,
        device="cpu",
        progress=sys.stderr.isatty(),
    )
    print(result, flush=True)
    model.eval()
    test_maps, test_theta = splits["test"]
    context = None if test_theta is None else theta_context(test_theta).float()
    torch.manual_seed(SEEDS["samples"])
    with torch.no_grad():  # the conditional model samples at the test maps' own parameters
        log_p = batched(lambda m, c: model.log_prob(m, context=c), test_maps, context)
        samples = batched(lambda m, c: model.sample(len(m), context=c), test_maps, context)
    metrics = {
        "test_nats_per_pixel": float(log_p.mean()) / (args.size**2),
        "test_maps": int(len(test_maps)),
        "best_val": float(result.best_val),
        "steps": int(result.steps),
        "train_seconds": float(result.seconds),
        "parameters": count_parameters(model),
        **spectrum_figures(samples, test_maps),
    }
    command = "python scripts/train_field_flow.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    blob = {
        "format": pretrained.FORMAT,
        "builder": "glow_field",
        "kwargs": kwargs,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "data": "lensing",
        "simulator": {
            "size": args.size,
            "maps": args.maps,
            "augment": args.augment,
            "noise": args.noise,
            "conditional": args.conditional,
            "prior": PRIOR_BOX if args.conditional else None,
            "seed": args.seed,
        },
        "metrics": metrics,
        "command": command,
        "hardware": hardware(),
        "torch_version": str(torch.__version__),
    }
    save_checkpoint(with_checksum(blob), args.out)
    if (args.out.parent / pretrained.MANIFEST).is_file():
        pretrained.record_in_manifest(args.out)
    print(
        f"test {metrics['test_nats_per_pixel']:.3f} nats/pixel; spectrum mean ratio "
        f"{[round(r, 3) for r in metrics['spectrum_mean_ratio']]}, std ratio "
        f"{[round(r, 3) for r in metrics['spectrum_std_ratio']]}; off-diagonal correlation samples "
        f"{metrics['offdiagonal_correlation_samples']:.3f}, "
        f"maps {metrics['offdiagonal_correlation_maps']:.3f}; "
        f"wrote {args.out}; total {time.perf_counter() - t_start:.0f} s",
        flush=True,
    )
    if not args.no_readme:
        ks = ", ".join(f"{k}={v}" for k, v in kwargs.items() if k != "shape")
        m = metrics
        row = (
            f"| `{args.out.name}` | glow_field ({ks}) | "
            f"{args.maps}{' x 8 (augmented)' if args.augment else ''}"
            f" of {args.size}x{args.size}{', noise ' + str(args.noise) if args.noise else ''} | "
            f"**{m['test_nats_per_pixel']:.3f}** | {[round(r, 2) for r in m['spectrum_mean_ratio']]} / "
            f"{[round(r, 2) for r in m['spectrum_std_ratio']]} | {m['offdiagonal_correlation_samples']:.3f}, "
            f"{m['offdiagonal_correlation_maps']:.3f} | {m['parameters']:,} | {m['steps']} | "
            f"{m['train_seconds'] / 60:.1f} min | `{command}` |"
        )
        update_readme(
            args.out.parent / "README.md", args.out.name, row, README_START, README_END, README_HEADER
        )
    return blob


if __name__ == "__main__":
    main()
