"""Train an image flow (Glow, RealNVP, NICE, the transformer flow) and ship it as a small, loadable file.

    python scripts/train_image_flow.py --model glow --data mnist --minutes 20 \\
        --out flowlib/checkpoints/glow_mnist.pt
    python scripts/train_image_flow.py --model glow --data mnist --classes --minutes 14 \\
        --out flowlib/checkpoints/glow_mnist_classes.pt        # class-conditional, p(x | y)
    python scripts/train_image_flow.py --model glow --data mnist --inpaint --minutes 14 \\
        --out flowlib/checkpoints/glow_mnist_inpaint.pt        # conditioned on the observed pixels
    python scripts/train_image_flow.py --model nice --data digits --minutes 1 --out /tmp/nice.pt --no-readme

``--classes`` trains Glow's class-conditional model (``classes=10``: every coupling and split
prior reads the one-hot label, the top latent has a learned prior per class) on (image, label)
pairs, and records the test accuracy of the Bayes classifier argmax_y p(x | y)
(:func:`flowlib.conditional.classify`). ``--inpaint`` trains a flow conditioned on the observed
part of the image, c = (m y, m) (:func:`flowlib.inpainting.inpainting_context`), one mask of
:func:`flowlib.inpainting.inpainting_masks` drawn per image (training masks from ``--seed``,
validation and test masks from other seeds, all recorded).

What it does:

1. loads the data: MNIST / Fashion-MNIST train minus its last 5000 images for training, those
   5000 for validation, the original 10000 test images for the test; the digits' fixed split;
2. trains with :func:`flowlib.train.fit` for ``--minutes`` of wall-clock time, validating every
   ``--eval-every`` steps and keeping the weights with the best validation bits/dim. The full
   training state goes to ``--state`` (default ``runs/<name>.fit.pt``, git-ignored), written
   atomically: run the same command again after an interruption and it resumes there, the
   time budget counting over both runs;
3. measures the TEST bits/dim of the selected model (importance-weighted over
   ``--iw-samples`` dequantization draws per image, see ``ImageFlowModel.bits_per_dim``);
4. writes ``--out`` atomically: a dict of plain values and tensors only, so that it loads with
   ``torch.load(path, weights_only=True)`` (no code runs on loading)::

       {"format": "flowlib.pretrained/1", "builder": "glow_image", "kwargs": {...},
        "state_dict": {...}, "data": "mnist", "grey_levels": 256, "metrics": {...}, ...}

   and rebuilds with ``getattr(flowlib.image_models, builder)(**kwargs)`` followed by
   ``load_state_dict`` (:func:`load_pretrained` does both);
5. adds (or replaces) the file's row in the README.md beside it: the exact command, the
   hardware, the time, the steps, the parameters and the test bits/dim.

Only the weights of the model are shipped (float32, a few MB); the optimizer state stays in
the training state file.
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from flowlib import pretrained
from flowlib._integrity import with_checksum
from flowlib._io import atomic_write
from flowlib.conditional import classify
from flowlib.data.images import DATASETS, load_digits, load_images, pad_to
from flowlib.image_models import count_parameters, mean_bits_per_dim
from flowlib.inpainting import inpainting_context, inpainting_masks
from flowlib.pretrained import BUILDERS as PRETRAINED_BUILDERS
from flowlib.pretrained import FORMAT, load_pretrained  # noqa: F401  (re-exported for users of the script)
from flowlib.train import fit, save_checkpoint

BUILDERS = {"glow": "glow_image", "realnvp": "realnvp_image", "nice": "nice_image",
            "tarflow": "tarflow_image"}
#: The builders a shipped file may name: nothing else is ever looked up by name.
ALLOWED_BUILDERS = PRETRAINED_BUILDERS
assert set(BUILDERS.values()) <= ALLOWED_BUILDERS  # glow_field is scripts/train_field_flow.py's
#: Sizes for a CPU: small conditioners, few flow steps. Override any of them with --set KEY=VALUE.
DEFAULT_KWARGS: dict[str, dict[str, Any]] = {
    "glow": {"scales": 2, "depth": 4, "hidden": 32, "blocks": 1},
    "realnvp": {"scales": 2, "depth": 4, "hidden": 32, "blocks": 1},
    "nice": {"couplings": 4, "hidden": 32, "blocks": 1},
    "tarflow": {"patch": 4, "blocks": 4, "width": 64, "layers": 2, "heads": 4},
}
#: Seeds of the inpainting masks of the validation and test images (the training masks use --seed).
INPAINT_SEEDS = {"val": 1001, "test": 1002}
#: How many test images score the Bayes classifier (10 classes x 1 draw each: 10 passes per image).
ACCURACY_IMAGES = 2000
MAX_BYTES = 10 * 1024 * 1024
VAL_SIZE = 5000  # the last 5000 training images of MNIST / Fashion-MNIST validate

README_START = "<!-- shipped-checkpoints:start -->"
README_END = "<!-- shipped-checkpoints:end -->"
README_HEADER = (
    "| file | model | data | test bits/dim | parameters | steps | training time | hardware | command |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


# Loading a shipped file: flowlib.pretrained.load_pretrained (re-exported here).


# -- the data ------------------------------------------------------------------------------------
def load_splits(name: str, pad: int | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """train / val / test images as float grey levels (what fit takes), padded to ``pad`` if given,
    and their labels."""
    if name == "digits":
        pairs = {s: load_digits(s) for s in ("train", "val", "test")}
    else:
        (train, labels), test = load_images(name, "train"), load_images(name, "test")
        pairs = {"train": (train[:-VAL_SIZE], labels[:-VAL_SIZE]),
                 "val": (train[-VAL_SIZE:], labels[-VAL_SIZE:]), "test": test}
    images = {s: (pad_to(x, pad) if pad else x).float() for s, (x, _) in pairs.items()}
    return images, {s: y.long() for s, (_, y) in pairs.items()}


def contexts(args: argparse.Namespace, data: dict, labels: dict,
             grey_levels: int) -> dict[str, torch.Tensor] | None:
    """Each split's contexts: the labels (``--classes``), the (observed image, mask) pairs
    (``--inpaint``), or None (unconditional)."""
    if args.classes:
        return labels
    if not args.inpaint:
        return None
    out = {}
    for split, x in data.items():
        seed = args.seed if split == "train" else INPAINT_SEEDS[split]
        masks = inpainting_masks(x.shape[0], size=x.shape[-1], generator=torch.Generator().manual_seed(seed))
        out[split] = inpainting_context(x, masks, grey_levels).float()
    return out


# -- the record ----------------------------------------------------------------------------------
def hardware(device: str = "cpu") -> str:
    """CPU model (from /proc/cpuinfo where there is one), threads, torch version, device."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    where = "cpu"
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        where = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return (f"{cpu} ({os.cpu_count()} cores), {torch.get_num_threads()} thread(s), "
            f"torch {torch.__version__}, {where}")


def update_readme(readme: Path, file_name: str, row: str, start: str = README_START, end: str = README_END,
                  header: str = README_HEADER) -> None:
    """Put ``row`` in the table of ``readme`` (created if missing), replacing the row of ``file_name``.

    ``start``, ``end``, ``header``: the markers and the header of the table (another script's table
    in the same README has its own)."""
    text = readme.read_text(encoding="utf-8") if readme.exists() else (
        "# Shipped checkpoints\n\nWritten by `scripts/train_image_flow.py`.\n\n")
    if start not in text:
        text = text.rstrip("\n") + f"\n\n{start}\n{header}\n{end}\n"
    head, rest = text.split(start, 1)
    table, tail = rest.split(end, 1)
    key = f"| `{file_name}` |"
    rows = [r for r in table.strip().splitlines()[2:] if r.strip() and not r.startswith(key)]
    rows.append(row)
    rows.sort()
    with atomic_write(readme, "w") as f:
        f.write(f"{head}{start}\n{header}\n" + "\n".join(rows) + f"\n{end}{tail}")


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, choices=sorted(BUILDERS))
    p.add_argument("--data", required=True, choices=sorted(DATASETS))
    p.add_argument("--minutes", type=float, required=True, help="wall-clock training budget (over resumes)")
    p.add_argument("--out", required=True, type=Path,
                   help="the file to ship, e.g. flowlib/checkpoints/glow_mnist.pt")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a builder argument, e.g. hidden=64 or dequantization=variational")
    p.add_argument("--pad", type=int, default=None, help="pad the images to PAD x PAD (e.g. 32 for 3 scales)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--classes", action="store_true", help="class-conditional: p(x | label)")
    kind.add_argument("--inpaint", action="store_true",
                      help="conditioned on the observed pixels and the mask (random squares or halves)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (warm-up, then cosine)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=None,
                   help="validation period in steps (default: 500 for MNIST, fit's choice for digits)")
    p.add_argument("--patience", type=int, default=None, help="early stopping, in validations (default: off)")
    p.add_argument("--iw-samples", type=int, default=4, help="dequantization draws per test image")
    p.add_argument("--state", type=Path, default=None,
                   help="training state for resuming (default: runs/<out name>.fit.pt)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing training state, start over")
    p.add_argument("--no-readme", action="store_true", help="do not touch the README beside --out")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--device", default="cpu", help="where to train and test: cpu, cuda, cuda:1...")
    p.add_argument("--amp", default="off", choices=["off", "auto", "bf16", "fp16"],
                   help="mixed precision of the training steps (CUDA only; see flowlib.train.fit)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def builder_kwargs(args: argparse.Namespace, shape: tuple[int, int, int], grey_levels: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"shape": list(shape), **DEFAULT_KWARGS[args.model], "grey_levels": grey_levels}
    if args.inpaint and args.model in ("tarflow", "nice"):
        raise SystemExit("--inpaint (an image context) is for the Glow and RealNVP families")
    if args.classes and args.model == "nice":
        raise SystemExit("--classes is for the Glow, RealNVP and transformer flows")
    if args.classes:
        kwargs["classes"] = 10
    if args.inpaint:
        kwargs["context_shape"] = [2 * shape[0], shape[1], shape[2]]
    return apply_overrides(kwargs, args.set)


def apply_overrides(kwargs: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """``kwargs`` updated by ``--set KEY=VALUE`` items: Python literals, else plain strings."""
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value  # a plain string, e.g. dequantization=variational
    return kwargs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    info = DATASETS[args.data]
    data, labels = load_splits(args.data, args.pad)
    shape = tuple(int(s) for s in data["train"].shape[1:])
    kwargs = builder_kwargs(args, shape, info.grey_levels)
    builder = BUILDERS[args.model]
    context = contexts(args, data, labels, info.grey_levels)

    def split(name: str) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return data[name] if context is None else (data[name], context[name])

    torch.manual_seed(args.seed)
    model = pretrained.builder(builder)(**kwargs)
    # ActNorm's data-dependent start on a large batch (a resumed run then loads its weights anyway).
    start = {} if context is None else {"context": context["train"][:1024]}
    model.initialize(data["train"][:1024], **start)
    state = args.state or Path("runs") / f"{args.out.stem}.fit.pt"
    eval_every = args.eval_every or (None if args.data == "digits" else 500)
    print(f"{args.model} ({builder}, {count_parameters(model)} parameters) on {args.data} {shape}: "
          f"{args.minutes:g} min, training state {state}", flush=True)
    result = fit(model, split("train"), val_data=split("val"), seconds=60.0 * args.minutes,
                 batch_size=args.batch, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup,
                 eval_every=eval_every, early_stopping_patience=args.patience, checkpoint=state,
                 resume=not args.fresh, seed=args.seed, device=args.device, amp=args.amp,
                 progress=sys.stderr.isatty())
    print(result, flush=True)

    t_test = time.perf_counter()
    torch.manual_seed(args.seed + 1)  # the test's dequantization draws
    device = next(model.parameters()).device  # where fit left it: the test runs there too
    test_bpd = mean_bits_per_dim(model, data["test"].to(device), args.iw_samples, batch=500,
                                 context=None if context is None else context["test"].to(device))
    extra: dict[str, Any] = {}
    if args.classes:  # the flow as a classifier, by Bayes' rule with a uniform prior
        predicted = classify(model, data["test"][:ACCURACY_IMAGES].to(device)).cpu()
        extra = {"test_accuracy": float((predicted == labels["test"][:ACCURACY_IMAGES]).float().mean()),
                 "accuracy_images": ACCURACY_IMAGES, "accuracy_iw_samples": 1}
    if args.inpaint:
        masks = f"flowlib.inpainting.inpainting_masks(n, size={shape[-1]}): a random square or a half hidden"
        extra = {"inpaint_masks": masks, "inpaint_seeds": {"train": args.seed, **INPAINT_SEEDS}}
    test_seconds = time.perf_counter() - t_test
    metrics = {
        "test_bpd": test_bpd, "test_iw_samples": args.iw_samples, "test_images": int(data["test"].shape[0]),
        "best_val_bpd": float(result.best_val), "best_step": int(result.best_step),
        "steps": int(result.steps),
        "train_seconds": float(result.seconds), "test_seconds": test_seconds,
        "parameters": count_parameters(model), "stop_reason": result.stop_reason, **extra,
    }
    command = "python scripts/train_image_flow.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    blob = {
        "format": FORMAT, "builder": builder, "kwargs": kwargs,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "data": args.data, "grey_levels": info.grey_levels, "pad": args.pad, "metrics": metrics,
        "command": command, "hardware": hardware(args.device), "torch_version": str(torch.__version__),
    }
    # The checksum of the tensors lets load_pretrained refuse a file corrupted later; a file written
    # into a folder with a manifest (flowlib/checkpoints/) is recorded there, or it would be refused.
    save_checkpoint(with_checksum(blob), args.out)
    if (args.out.parent / pretrained.MANIFEST).is_file():
        pretrained.record_in_manifest(args.out)
        print(f"recorded {args.out.name} in {args.out.parent / pretrained.MANIFEST}", flush=True)
    size = args.out.stat().st_size
    if size > MAX_BYTES:
        print(f"WARNING: {args.out} is {size / 2**20:.1f} MiB, over the 10 MiB meant for shipped files",
              file=sys.stderr)
    print(f"test bits/dim {test_bpd:.4f} ({args.iw_samples} draws/image, {test_seconds:.0f} s); "
          f"wrote {args.out} ({size / 2**20:.2f} MiB); total {time.perf_counter() - t_start:.0f} s",
          flush=True)

    if not args.no_readme:
        ks = ", ".join(f"{k}={v}" for k, v in kwargs.items() if k not in ("shape", "grey_levels"))
        row = (f"| `{args.out.name}` | {args.model} ({ks}) | {args.data} {'x'.join(map(str, shape))} | "
               f"**{test_bpd:.3f}** ({args.iw_samples} draws, {metrics['test_images']} images; best val "
               f"{metrics['best_val_bpd']:.3f}) | {metrics['parameters']:,} | {metrics['steps']} | "
               f"{metrics['train_seconds'] / 60:.1f} min (+{test_seconds / 60:.1f} min test) | "
               f"{blob['hardware']} | `{command}` |")
        update_readme(args.out.parent / "README.md", args.out.name, row)
    return blob


if __name__ == "__main__":
    main()
