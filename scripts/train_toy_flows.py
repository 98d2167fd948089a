"""Train the NICE and RealNVP of lecture 4's 2D-toy comparison; write them to lectures/toy_flows/.

    python scripts/train_toy_flows.py                   # the six shipped models, about 7 min of one CPU core
    python scripts/train_toy_flows.py --toys two_moons --steps 300 --out /tmp/toys   # a quick try

Lecture 4 compares NICE (additive couplings, then one diagonal scaling) with RealNVP (affine
couplings) on three 2D toys with exact densities, by KL(p_data || p_model). Both models get
the same structure and the same budget, so that the scale exp(s) is the only difference:

- 12 couplings of alternating masks, each conditioner an MLP with two hidden layers of 64 ReLU
  units (``flowlib.models.nice`` / ``flowlib.models.realnvp`` with ``actnorm=False``): 52,238
  and 53,016 parameters (RealNVP's MLPs also output the log-scales);
- ``flowlib.train.fit`` on 200,000 fixed samples of the toy, 6,000 steps of batch 512, AdamW at
  lr 2e-3 (200 warm-up steps, cosine decay), gradient norm clipped at 5, seed 0, one thread.

Trained in the lecture itself, six such models would take longer than a lecture should (60 to
80 s of CPU time each); the lecture loads these files instead, each checked as it is read.

What is written (``--out``, default ``lectures/toy_flows/``): one file per model,
``<toy>-<model>.pt``, holding only tensors and plain values (it loads with
``torch.load(..., weights_only=True)``)::

    {"format": "flowlib.toy-flow/1", "builder": "realnvp", "kwargs": {...}, "toy": "two_moons",
     "state_dict": {...}, "metrics": {"kl": ..., "kl_stderr": ..., "parameters": ..., ...},
     "command": "...", "hardware": "...", "tensor_sha256": "..."}

with the checksum of its tensors (``flowlib._integrity.with_checksum``), and ``MANIFEST.json``
beside them with each file's SHA-256 and its metrics. A reader checks the file's SHA-256 against
the manifest, then the tensor checksum and that every weight is finite
(``flowlib._integrity.verify_checksum``, ``require_finite``) before building the model.
The KL figures are Monte Carlo estimates over 200,000 fresh samples of the toy.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a clone without installing flowlib
    sys.path.insert(0, str(ROOT))

from flowlib._integrity import file_sha256, with_checksum  # noqa: E402
from flowlib._io import atomic_write  # noqa: E402
from flowlib.data.toys import get_toy  # noqa: E402
from flowlib.metrics import kl_divergence_estimate  # noqa: E402
from flowlib.models import nice, realnvp  # noqa: E402
from flowlib.train import fit  # noqa: E402

FORMAT = "flowlib.toy-flow/1"
MANIFEST_FORMAT = "flowlib.toy-flows-manifest/1"
TOYS = ("eight_gaussians", "two_moons", "checkerboard")
#: The two models, the same structure: only the transformer differs (additive vs affine).
BUILDERS = {"nice": nice, "realnvp": realnvp}
KWARGS = {"nice": {"couplings": 12, "hidden": 64, "layers": 2},
          "realnvp": {"couplings": 12, "hidden": 64, "layers": 2, "actnorm": False}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--toys", default=",".join(TOYS), help="comma-separated toy names")
    p.add_argument("--models", default="nice,realnvp", help="comma-separated: nice, realnvp")
    p.add_argument("--steps", type=int, default=6000, help="optimizer steps per model")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--samples", type=int, default=200_000, help="training samples drawn once per toy")
    p.add_argument("--kl-samples", type=int, default=200_000, help="fresh samples for each KL estimate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "lectures" / "toy_flows"), help="folder for the files")
    return p.parse_args(argv)


def train_one(toy_name: str, model_name: str, args: argparse.Namespace) -> dict:
    """Train one model; return the blob to save (without its checksum)."""
    toy = get_toy(toy_name)
    x = toy.sample(args.samples, generator=torch.Generator().manual_seed(args.seed + 1))
    torch.manual_seed(args.seed)
    kwargs = KWARGS[model_name]
    model = BUILDERS[model_name](2, **kwargs)
    cpu0 = time.process_time()
    fit(model, x, steps=args.steps, batch_size=args.batch, lr=args.lr, warmup_steps=200, clip_grad_norm=5.0,
        seed=args.seed, device="cpu", progress=False)
    cpu_s = time.process_time() - cpu0
    model.eval()
    kl = kl_divergence_estimate(toy, model, n=args.kl_samples,
                                generator=torch.Generator().manual_seed(10_000 + args.seed))
    metrics = {"kl": kl.value, "kl_stderr": kl.stderr, "kl_samples": args.kl_samples,
               "parameters": sum(p.numel() for p in model.parameters()), "steps": args.steps,
               "batch_size": args.batch, "lr": args.lr, "train_cpu_seconds": round(cpu_s, 1)}
    return {"format": FORMAT, "builder": model_name, "kwargs": dict(kwargs), "toy": toy_name,
            "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}, "metrics": metrics,
            "command": " ".join(["python scripts/train_toy_flows.py", *sys.argv[1:]]),
            "hardware": f"{platform.processor() or platform.machine()}, 1 thread, torch {torch.__version__}"}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)  # these matrices are tiny: more threads only add synchronisation
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    where = out / "MANIFEST.json"
    manifest = json.loads(where.read_text(encoding="utf-8")) if where.is_file() else {}
    entries = dict(manifest.get("files", {}))
    for toy_name in [t.strip() for t in args.toys.split(",") if t.strip()]:
        for model_name in [m.strip() for m in args.models.split(",") if m.strip()]:
            if model_name not in BUILDERS:
                raise SystemExit(f"unknown model {model_name!r}: expected one of {sorted(BUILDERS)}")
            blob = with_checksum(train_one(toy_name, model_name, args))
            path = out / f"{toy_name}-{model_name}.pt"
            with atomic_write(path, "wb") as f:
                torch.save(blob, f)
            entries[path.stem] = {"file": path.name, "file_sha256": file_sha256(path),
                                  "tensor_sha256": blob["tensor_sha256"], "builder": model_name,
                                  "kwargs": blob["kwargs"], "toy": toy_name, "metrics": blob["metrics"]}
            m = blob["metrics"]
            print(f"{path.name}: {m['parameters']:,} parameters, KL {m['kl']:.4f} +- {m['kl_stderr']:.4f} "
                  f"nats after {m['steps']} steps ({m['train_cpu_seconds']:.0f} s CPU), "
                  f"{path.stat().st_size:,} bytes", flush=True)
    manifest = {"format": MANIFEST_FORMAT,
                "about": "The toy flows of lecture 4, written by scripts/train_toy_flows.py: a reader "
                         "refuses a file whose bytes differ from its file_sha256.",
                "files": dict(sorted(entries.items()))}
    with atomic_write(where, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    if not math.isfinite(sum(e["metrics"]["kl"] for e in entries.values())):
        raise SystemExit("a KL estimate is not finite: see the figures above")


if __name__ == "__main__":
    main()
