"""Test bits/dim of flowlib's shipped unconditional MNIST flows, measured again side by side.

    python benchmarks/mnist_models.py                   # every unconditional MNIST file, 2000 test images
    python benchmarks/mnist_models.py --images 10000 --iw-samples 4
    python benchmarks/mnist_models.py --before 5f67e16  # add glow_mnist.pt as it was at that commit

Each file of ``flowlib/checkpoints`` trained on MNIST without a context (``glow_mnist``,
``realnvp_mnist``, ``nice_mnist``, ``tarflow_mnist``) is loaded with
:func:`flowlib.pretrained.load_pretrained` and scored on the first ``--images`` of the 10000
MNIST test images: bits/dim = -log2 P(x) / 784 of the discrete images, importance-weighted over
``--iw-samples`` uniform-dequantization draws per image (Ho et al., 2019; the same draws for every
file: the generator is re-seeded before each), in float64 accumulation of float32 log-densities.
The table also shows what the file itself records (its test figure on all 10000 images, training
time, steps and the command that trained it), so a reader sees both the re-measured figure and
the recorded one. ``--before REV`` adds ``glow_mnist.pt`` of an earlier git revision (read with
``git show``, checked by its tensor checksum), the row a retrained file is compared with.

Target (issue 18): a shipped MNIST model at <= 1.30 test bits/dim, trained on this CPU in <= 2 h.
For scale: large flows trained for hours on a GPU reach about 1.0-1.1 bits/dim on MNIST (1.05 for
Glow, Kingma & Dhariwal, 2018; 1.02 for the multi-scale flow of Lippe's UvA tutorial 11).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowlib.data.images import load_images, pad_to  # noqa: E402
from flowlib.image_models import count_parameters  # noqa: E402
from flowlib.metrics import mean_bits_per_dim  # noqa: E402
from flowlib.pretrained import checkpoint_info, load_pretrained, shipped_checkpoints  # noqa: E402

TARGET_BPD = 1.30


def unconditional_mnist() -> dict[str, dict]:
    """The shipped files trained on MNIST that take no context (no labels, no observed pixels), with
    their records (:func:`checkpoint_info`)."""
    found = {}
    for name in sorted(shipped_checkpoints()):
        info = checkpoint_info(name)
        kwargs = info.get("kwargs", {})
        if info.get("data") == "mnist" and "classes" not in kwargs and "context_shape" not in kwargs:
            found[name] = info
    return found


def earlier_file(rev: str, folder: Path) -> Path:
    """glow_mnist.pt as committed at ``rev``, written to ``folder``."""
    blob = subprocess.run(["git", "show", f"{rev}:flowlib/checkpoints/glow_mnist.pt"], cwd=ROOT,
                          capture_output=True, check=True).stdout
    path = folder / f"glow_mnist@{rev}.pt"
    path.write_bytes(blob)
    return path


def score(source: str | Path, info: dict, x: torch.Tensor, samples: int,
          seed: int) -> tuple[float, float, dict]:
    """(bits/dim, seconds, the file's record ``info`` with its parameter count) on the images ``x``."""
    model = load_pretrained(source)
    pad = int(info.get("pad") or x.shape[-1])
    if pad != x.shape[-1]:
        x = pad_to(x, pad)
    torch.manual_seed(seed)
    t0 = time.process_time()
    with torch.no_grad():
        bpd = mean_bits_per_dim(model, x, samples=samples, batch=500)
    info["parameters"] = count_parameters(model)
    return bpd, time.process_time() - t0, info


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000, help="first N of the 10000 test images")
    p.add_argument("--iw-samples", type=int, default=4, help="dequantization draws per image")
    p.add_argument("--before", default=None, help="a git revision: add glow_mnist.pt as it was there")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    x, _ = load_images("mnist", "test")
    x = x[:args.images]
    with tempfile.TemporaryDirectory() as tmp:
        shipped = unconditional_mnist()
        sources: list[tuple[str, str | Path, dict]] = [(n, n, info) for n, info in shipped.items()]
        if args.before:
            old = earlier_file(args.before, Path(tmp))
            sources.insert(1, (f"glow_mnist (before: the file at {args.before})", old, checkpoint_info(old)))
        rows = [(label, *score(src, info, x, args.iw_samples, args.seed)) for label, src, info in sources]
    print(f"MNIST test bits/dim (first {x.shape[0]} of the 10000 test images, {args.iw_samples} "
          f"dequantization draws per image, the same draws for every file; {args.threads} torch thread(s)); "
          f"target <= {TARGET_BPD:.2f} for the shipped Glow.\n")
    print("| file | model | params | test bpd (measured) | recorded test bpd (10000 images) | steps | "
          "training time | scoring CPU s | command |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for label, bpd, seconds, info in rows:
        m = info.get("metrics", {})
        kw = ", ".join(f"{k}={v}" for k, v in info["kwargs"].items() if k not in ("shape", "grey_levels"))
        train = f"{m['train_seconds'] / 60:.1f} min" if "train_seconds" in m else "-"
        rec = f"{m['test_bpd']:.3f}" if "test_bpd" in m else "-"
        print(f"| {label} | {info['builder']} ({kw}) | {info['parameters']:,} | **{bpd:.3f}** | {rec} | "
              f"{m.get('steps', '-')} | {train} | {seconds:.1f} | `{info.get('command', '-')}` |")
    best = min(bpd for label, bpd, _, _ in rows if label == "glow_mnist")
    verdict = "met" if best <= TARGET_BPD else f"missed by {best - TARGET_BPD:.3f}"
    print(f"\nShipped glow_mnist: {best:.3f} bits/dim on these images; target <= {TARGET_BPD:.2f}: "
          f"{verdict}.")


if __name__ == "__main__":
    main()
