"""Glow, RealNVP and NICE on the 8x8 digits: test bits/dim after a fixed wall-clock budget.

    python benchmarks/digits_bpd.py                 # 300 s per model (about 15 minutes)
    python benchmarks/digits_bpd.py --quick         # 60 s per model
    python benchmarks/digits_bpd.py --models glow --set glow.hidden=24 --seconds 120

The data are scikit-learn's 8x8 digits (17 grey levels) with flowlib's fixed train / val /
test split (1259 / 179 / 359, :func:`flowlib.data.load_digits`). Each model is trained with
:func:`flowlib.train.fit` for ``--seconds`` of wall-clock time; fit validates about once an
epoch, keeps the weights with the best validation bits/dim, stops early when the validation
figure has not improved for ``--patience`` evaluations, and restores the best weights. The
TEST figure is then measured once, on the selected model only.

Two test figures are printed: fit's (one uniform-dequantization draw per image, a looser
bound) and the importance-weighted one, ``ImageFlowModel.bits_per_dim(x, samples=S)``, which
estimates P(x) by the mean over S dequantization draws (Ho et al., 2019) and is the column to
quote (a bound on -log2 P(x) / D that tightens as S grows).

With only 1259 training images of 64 pixels, every model here overfits within a few minutes
on a CPU: the train figure keeps falling while the validation figure turns up. What helps on
a 2-core CPU, each a flag:

- small conditioners (one residual block of 32 channels): fast steps, and few parameters to
  memorise the training set with (16 channels did worse in 120 s, 64 is twice as slow a step);
- strong AdamW weight decay (0.5, i.e. weights shrink by lr * 0.5 per step), which pulls the
  weights the data do not support back to 0 (in single 120 s trials of Glow: 1.99 test bits/dim
  against 2.01 with 0.05 or 1e-3; a small gain, of the order of the run-to-run noise);
- a high peak learning rate (5e-3 rather than 2e-3): a short budget needs big steps early;
- a learning rate warmed up and then decayed to 0 by a cosine over the TIME budget, so the last
  epochs average out the gradient noise instead of chasing single batches;
- early stopping on the validation figure, and restoring the best weights (fit does both).

The summary below the table shows the overfitting: the validation figure at its best step and
at the end of training, and the training figure at the end.
"""

from __future__ import annotations

import argparse
import ast
import math
import time
from typing import Any

import torch

from flowlib.data.images import DIGITS_GREY_LEVELS, load_digits
from flowlib.image_models import (
    count_parameters,
    glow_image,
    mean_bits_per_dim,
    nice_image,
    realnvp_image,
)
from flowlib.train import FitResult, fit

BUILDERS = {"glow": glow_image, "realnvp": realnvp_image, "nice": nice_image}

#: Builder keyword arguments per model (``grey_levels`` is added: 17). Chosen for a 2-core CPU.
CONFIGS: dict[str, dict[str, Any]] = {
    "glow": {"scales": 2, "depth": 4, "hidden": 32, "blocks": 1},
    "realnvp": {"scales": 2, "depth": 4, "hidden": 32, "blocks": 1},
    "nice": {"couplings": 4, "hidden": 32, "blocks": 1},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seconds", type=float, default=300.0, help="training wall-clock budget per model")
    p.add_argument("--quick", action="store_true", help="60 s per model (overrides --seconds)")
    p.add_argument("--models", default="glow,realnvp,nice", help="comma-separated, from glow, realnvp, nice")
    p.add_argument("--set", action="append", default=[], metavar="MODEL.KEY=VALUE",
                   help="override a builder argument, e.g. glow.hidden=24 (repeatable)")
    p.add_argument("--batch", type=int, default=64, help="batch size")
    p.add_argument("--lr", type=float, default=5e-3, help="peak learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=0.5, help="AdamW weight decay")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    p.add_argument("--patience", type=int, default=30,
                   help="early stopping: validations (about one an epoch) without improvement")
    p.add_argument("--iw-samples", type=int, default=32,
                   help="dequantization draws per test image for the importance-weighted bits/dim")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.seconds = 60.0
    return args


def model_configs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """CONFIGS with the ``--set`` overrides applied, for the models asked for."""
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(BUILDERS))
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {sorted(BUILDERS)}")
    configs = {name: dict(CONFIGS[name]) for name in names}
    for item in args.set:
        key, _, value = item.partition("=")
        model, _, field = key.partition(".")
        if model not in BUILDERS or not field or not value:
            raise SystemExit(f"--set expects MODEL.KEY=VALUE with MODEL in {sorted(BUILDERS)}, got {item!r}")
        if model in configs:
            try:
                configs[model][field] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                configs[model][field] = value  # a plain string, e.g. dequantization=variational
    return configs


def train_one(name: str, kwargs: dict[str, Any], data: dict[str, torch.Tensor],
              args: argparse.Namespace) -> tuple[dict[str, Any], FitResult]:
    torch.manual_seed(args.seed)
    model = BUILDERS[name]((1, 8, 8), grey_levels=DIGITS_GREY_LEVELS, **kwargs)
    # ActNorm's data-dependent start on the whole training set, not on the first small batch.
    model.initialize(data["train"])
    result = fit(model, data["train"], val_data=data["val"], test_data=data["test"], seconds=args.seconds,
                 batch_size=args.batch, lr=args.lr, weight_decay=args.weight_decay,
                 warmup_steps=args.warmup, early_stopping_patience=args.patience, seed=args.seed,
                 device="cpu", progress=False)
    t0 = time.perf_counter()
    torch.manual_seed(args.seed + 1)  # the dequantization draws of the test figure
    test_iw = mean_bits_per_dim(model, data["test"], args.iw_samples, batch=128)
    spe = max(1, data["train"].shape[0] // args.batch)
    tail = result.losses[-spe:]  # the last epoch's training figure (one draw per image, noisy)
    return {
        "params": count_parameters(model), "steps": result.steps, "best_step": result.best_step,
        "best_val": result.best_val, "end_val": result.val[-1], "train_end": sum(tail) / len(tail),
        "test_1": result.test, "test_iw": test_iw, "seconds": result.seconds,
        "wall": result.wall_time + time.perf_counter() - t0, "stop": result.stop_reason,
    }, result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = model_configs(args)
    # fit takes float grey levels 0..16 (the image models dequantize them themselves).
    data = {split: load_digits(split)[0].float() for split in ("train", "val", "test")}
    print(f"digits 8x8, {DIGITS_GREY_LEVELS} levels, train/val/test = "
          f"{'/'.join(str(data[s].shape[0]) for s in ('train', 'val', 'test'))}; {args.seconds:.0f} s per "
          f"model; AdamW lr {args.lr:g} (warm-up {args.warmup} + cosine over the time budget), weight decay "
          f"{args.weight_decay:g}, batch {args.batch}, early stopping after {args.patience} validations; "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}")
    for name, kwargs in configs.items():
        print(f"  {name}: {kwargs}")
    rows = {}
    for name, kwargs in configs.items():
        rows[name], _ = train_one(name, kwargs, data, args)
        r = rows[name]
        print(f"  ... {name} done: {r['steps']} steps, stopped by {r['stop']}, test {r['test_iw']:.3f}",
              flush=True)

    print()
    print(f"{'model':<8} {'params':>8} {'steps':>6} {'best val':>9} {'test bpd':>9} {'test (1 draw)':>13} "
          f"{'wall s':>7}")
    for name, r in rows.items():
        print(f"{name:<8} {r['params']:>8d} {r['steps']:>6d} {r['best_val']:>9.3f} {r['test_iw']:>9.3f} "
              f"{r['test_1']:>13.3f} {r['wall']:>7.1f}")
    print(f"test bpd: importance-weighted over {args.iw_samples} uniform-dequantization draws per image, "
          f"of the model with the best validation figure; best val and test (1 draw): one draw per image. "
          f"Uniform noise on the 17 levels gives log2(17) = {math.log2(DIGITS_GREY_LEVELS):.3f}.")
    print()
    print("overfitting (bits/dim, one draw per image):")
    print(f"{'model':<8} {'best step':>9} {'val at best':>11} {'val at end':>10} {'train at end':>12} "
          f"{'stop':>15}")
    for name, r in rows.items():
        print(f"{name:<8} {r['best_step']:>9d} {r['best_val']:>11.3f} {r['end_val']:>10.3f} "
              f"{r['train_end']:>12.3f} {r['stop']:>15}")


if __name__ == "__main__":
    main()
