"""Convert the shipped checkpoints once to the layout of today's builders, and prove the map unchanged.

    # 1. the "before" figures, with the OLD flowlib first on the path (a worktree of the old commit):
    PYTHONPATH=/tmp/flowlib_base python scripts/convert_checkpoints.py reference \\
        --checkpoints /tmp/flowlib_base/checkpoints
    # 2. with today's flowlib: rebuild, copy the tensors by key, check, write atomically (a file
    #    converted before gets only the state-dict keys renamed since: RENAMED_ATTRIBUTES)
    python scripts/convert_checkpoints.py convert
    # 3. any time: today's files against the recorded figures
    python scripts/convert_checkpoints.py verify
    # 4. record the checksum of each file's tensors in it, and the folder's MANIFEST.json
    python scripts/convert_checkpoints.py checksum

What stays the same is the *map*. The figure kept is the continuous log-density
``log p_Y(y)`` (``ImageFlowModel.log_prob_continuous``) of fixed inputs y, computed with the
model and the data in float64 (in float32 two orders of summation alone differ by ~1e-3 nats):

- ``mnist``: the first 256 MNIST test images (t10k, uint8 grey levels, padded as the file
  records), dequantized with FIXED noise, ``y = (x + u) / K``, ``u`` from
  ``torch.Generator().manual_seed(DEQUANTIZATION_SEED)`` in float64;
- ``noise``: 256 images of uniform noise on [0, 1]^D from ``manual_seed(NOISE_SEED)``: a check
  that needs no MNIST (the data set is never committed), so the test runs everywhere.

The figures, the SHA-256 of every input tensor and the recipe go to
``tests/checkpoint_reference.json``. Conversion maps the old builder keywords to the new
vocabulary (``levels`` -> ``scales``, ``steps`` -> ``depth``, ``bins`` -> ``grey_levels``),
rebuilds with today's builder, renames the state-dict keys of renamed module attributes
(``RENAMED_ATTRIBUTES``: a ``MultiScale``'s per-scale flows ``steps.<scale>.*`` ->
``flows.<scale>.*``), and loads the old tensors by key: a key of the new model that
the old file lacks is taken from the fresh model only if it is a buffer the builder computes
(a coupling's ``mask``); any other missing, extra or mis-shaped key stops the script. The file
gets a ``converted`` entry (what, when, by which script, the largest difference) and is written
with :func:`flowlib._io.atomic_write`, only after its figures match within ``TOLERANCE``.
A file converted before (not the file of the reference, but with a ``converted`` entry) gets
only the key renames it lacks, its tensors unchanged (checked bit for bit), the same check of
its figures, one more ``converted`` entry, and its old ``tensor_sha256`` (verified first)
dropped: the key paths are part of it, so run ``checksum`` next. A file in today's layout is
left alone, so ``convert`` may run any number of times.

``checksum`` changes no weight: it adds to each file the SHA-256 of its tensors
(``tensor_sha256``, :func:`flowlib._integrity.state_checksum`), rewriting the file atomically
only after the rewritten bytes were read back with every tensor equal, and writes
``MANIFEST.json`` beside the files (name, file SHA-256, tensor checksum, builder, keywords,
metrics), which :func:`flowlib.pretrained.load_pretrained` checks the shipped files against. A
file whose recorded checksum no longer matches its tensors, or that holds a NaN, is refused
(``--force`` re-records a file whose tensors were changed on purpose).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "checkpoint_reference.json"
N_IMAGES = 256
DEQUANTIZATION_SEED = 11
NOISE_SEED = 12
#: nats per image, float64: the issue's bar (float64 rounding of one map is ~1e-10 here).
TOLERANCE = 1e-6
#: old builder keyword -> the one word flowlib now uses for it.
RENAMED = {"levels": "scales", "steps": "depth", "bins": "grey_levels"}
#: Module attributes renamed since the files were trained: (class, old name, new name); the keys
#: ``<module>.<old>.*`` of each such module become ``<module>.<new>.*`` (issue 11: one word, one meaning).
RENAMED_ATTRIBUTES = (("MultiScale", "steps", "flows"),)
#: Buffers a builder computes from its arguments (never learned): taken from the fresh model.
COMPUTED_BUFFERS = ("mask",)
RECIPE = {
    "mnist": (f"x = the first {N_IMAGES} MNIST t10k images as uint8 grey levels 0..K-1 (K = the file's "
              f"grey levels, 256), "
              f"padded to blob['pad'] if set; u = torch.rand(x.shape, generator=torch.Generator()"
              f".manual_seed({DEQUANTIZATION_SEED}), dtype=torch.float64); y = (x.double() + u) / K"),
    "noise": (f"y = torch.rand((N, C, H, W), generator=torch.Generator().manual_seed({NOISE_SEED}), "
              f"dtype=torch.float64), N = {N_IMAGES}, (C, H, W) the model's event shape"),
    "figure": "model.double().eval(); model.log_prob_continuous(y) under torch.no_grad(), nats per image",
}


# -- the fixed inputs and their figures (shared with tests/test_checkpoints_shipped.py) -----------
def sha256(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes, with its dtype and shape (so a float32 twin never matches)."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def mnist_input(blob: dict) -> torch.Tensor:
    """The dequantized MNIST test images of the recipe; raises flowlib's DatasetError without MNIST."""
    from flowlib.data.images import load_images, pad_to

    x = load_images(blob["data"], "test", download=False)[0][:N_IMAGES]
    if blob.get("pad"):
        x = pad_to(x, blob["pad"])
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(DEQUANTIZATION_SEED), dtype=torch.float64)
    return (x.double() + u) / grey_levels(blob)


def grey_levels(blob: dict) -> int:
    """The file's number of grey levels K (stored as ``levels`` before the conversion)."""
    return int(blob["grey_levels"] if "grey_levels" in blob else blob["levels"])


def noise_input(shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform noise images on [0, 1]^D: a fixed input that needs no data set."""
    gen = torch.Generator().manual_seed(NOISE_SEED)
    return torch.rand((N_IMAGES, *shape), generator=gen, dtype=torch.float64)


@torch.no_grad()
def log_densities(model: torch.nn.Module, y: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """``log_prob_continuous(y)`` in float64, nats per image (the model is cast to float64 in place)."""
    model.double().eval()
    return torch.cat([model.log_prob_continuous(y[i:i + batch]) for i in range(0, y.shape[0], batch)])


def figures(model: torch.nn.Module, blob: dict, need_mnist: bool = True) -> dict[str, dict[str, Any]]:
    """``{input name: {"sha256": ..., "log_prob_continuous": [...]}}`` for the inputs available here."""
    from flowlib.data.images import DatasetError

    inputs = {"noise": noise_input(tuple(model.event_shape))}
    try:
        inputs["mnist"] = mnist_input(blob)
    except DatasetError:
        if need_mnist:
            raise
    return {name: {"sha256": sha256(y), "log_prob_continuous": log_densities(model, y).tolist()}
            for name, y in inputs.items()}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- 1. reference: the figures of the files as they are ------------------------------------------
def reference(folder: Path, out: Path) -> None:
    import flowlib
    from flowlib.pretrained import load_pretrained

    print(f"flowlib from {Path(flowlib.__file__).parent}", flush=True)
    models = {}
    for path in sorted(folder.glob("*.pt")):
        blob = torch.load(path, map_location="cpu", weights_only=True)
        models[path.stem] = {"file_sha256": file_sha256(path), "kwargs": blob["kwargs"],
                             **figures(load_pretrained(path), blob)}
        mean = sum(models[path.stem]["mnist"]["log_prob_continuous"]) / N_IMAGES
        print(f"{path.stem}: mean log p_Y = {mean:.6f} nats (mnist)", flush=True)
    record = {"recipe": RECIPE, "computed_by": f"scripts/convert_checkpoints.py reference ({_now()}), "
              f"torch {torch.__version__}, flowlib at commit {_commit(Path(flowlib.__file__).parent)}",
              "tolerance_nats": TOLERANCE, "models": models}
    _write_json(out, record)
    print(f"wrote {out}")


# -- 2. convert: rebuild with today's builders, copy the tensors by key ---------------------------
def new_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The stored builder keywords in today's vocabulary (a keyword already new is kept)."""
    out = {}
    for key, value in kwargs.items():
        new = RENAMED.get(key, key)
        if new in out:
            raise SystemExit(f"convert_checkpoints: both {key!r} and {new!r} in {kwargs}")
        out[new] = value
    out.pop("coupling", None)  # the coupling now chooses slicing or masking by itself
    return out


def key_renames(model: torch.nn.Module) -> dict[str, str]:
    """``{old key prefix: new key prefix}`` for the modules of ``model`` with a renamed attribute."""
    out = {}
    for name, module in model.named_modules():
        for cls, old, new in RENAMED_ATTRIBUTES:
            if type(module).__name__ == cls:
                base = f"{name}." if name else ""
                out[f"{base}{old}."] = f"{base}{new}."
    return out


def rename_keys(state: dict[str, torch.Tensor], renames: dict[str, str]) -> tuple[dict, dict[str, str]]:
    """``state`` with every key under an old prefix moved to the new one, and ``{old key: new key}``."""
    out, moved = {}, {}
    for key, value in state.items():
        new = next((n + key[len(o):] for o, n in renames.items() if key.startswith(o)), key)
        if new != key:
            if new in state:
                raise SystemExit(f"convert_checkpoints: both {key!r} and {new!r} in the old file")
            moved[key] = new
        out[new] = value
    return out, moved


def transfer(old: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """The new state dict: old tensors by key; computed buffers from ``fresh``; anything else fails."""
    state, computed = {}, []
    problems = [f"the old file has {k!r}, the new model has not" for k in old if k not in fresh]
    for key, value in fresh.items():
        if key in old:
            if old[key].shape != value.shape:
                problems.append(f"{key}: old shape {tuple(old[key].shape)}, new {tuple(value.shape)}")
            state[key] = old[key]
        elif key.rsplit(".", 1)[-1] in COMPUTED_BUFFERS:
            state[key] = value.detach().clone()
            computed.append(key)
        else:
            problems.append(f"the new model has {key!r}, the old file has not")
    if problems:
        raise SystemExit("convert_checkpoints: the layouts do not match:\n  " + "\n  ".join(problems))
    return state, computed


def _check_recorded_checksum(blob: dict, name: str) -> None:
    """A file converted again must be the one that was checked in: its tensors match its checksum."""
    from flowlib._integrity import CHECKSUM_KEY, state_checksum

    if blob.get(CHECKSUM_KEY) is not None and blob[CHECKSUM_KEY] != state_checksum(blob):
        raise SystemExit(f"{name}: its tensors no longer match the checksum recorded in it; restore it first")


def _unchanged(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor], moved: dict[str, str],
               computed: list[str], name: str) -> None:
    """Every tensor written is the old one under its new key: same dtype, shape and bits."""
    for key, value in old.items():
        got = new[moved.get(key, key)]
        if got.dtype != value.dtype or got.shape != value.shape or not torch.equal(got, value):
            raise SystemExit(f"{name}: {key} would change; nothing written")
    if len(new) != len(old) + len(computed):
        raise SystemExit(f"{name}: {len(new)} tensors to write, {len(old)} read; nothing written")


def convert(folder: Path, ref_path: Path, dry_run: bool) -> None:
    from flowlib import image_models
    from flowlib._integrity import CHECKSUM_KEY
    from flowlib._io import atomic_write

    ref = json.loads(ref_path.read_text())
    for path in sorted(folder.glob("*.pt")):
        blob = torch.load(path, map_location="cpu", weights_only=True)
        want = ref["models"][path.stem]
        original = file_sha256(path) == want["file_sha256"]
        if not original and "converted" not in blob:
            raise SystemExit(f"{path.name} is neither the file the reference was computed from nor a "
                             f"converted one")
        kwargs = new_kwargs(blob["kwargs"])
        torch.manual_seed(0)
        model = getattr(image_models, blob["builder"])(**kwargs)
        old_state, moved = rename_keys(blob["state_dict"], key_renames(model))
        if not original and not moved:
            print(f"{path.name}: already in today's layout, nothing to do (run 'verify')")
            continue
        _check_recorded_checksum(blob, path.name)
        state, computed = transfer(old_state, model.state_dict())
        if not original and computed:
            raise SystemExit(f"{path.name}: a converted file lacks {computed}; nothing written")
        model.load_state_dict(state)
        diff = _max_difference(figures(model, blob), want, path.stem)
        new_state = {k: v.detach().cpu().contiguous() for k, v in state.items()}  # float32, as trained
        _unchanged(blob["state_dict"], new_state, moved, computed, path.name)
        blob["kwargs"] = kwargs
        blob["state_dict"] = new_state
        done = []
        if original:
            done += [f"builder keywords {_renamed(blob)} renamed",
                     f"tensors copied by key into the one Coupling layout ({len(computed)} computed mask "
                     f"buffers from the builder)", "moved to flowlib/checkpoints/"]
        if moved:
            prefixes = sorted({(o, n) for o, n in key_renames(model).items()
                               if any(k.startswith(o) for k in moved)})
            done.append("state-dict keys " + ", ".join(f"{o}* -> {n}*" for o, n in prefixes)
                        + f" renamed ({len(moved)} tensors, every one unchanged)")
        note = (f"converted {datetime.date.today().isoformat()} by scripts/convert_checkpoints.py: "
                + "; ".join(done) + f"; float64 log p_Y of {N_IMAGES} MNIST test images and {N_IMAGES} "
                f"noise images equal to {diff:.1e} nats")
        previous = blob.get("converted")
        blob["converted"] = note if previous is None else f"{previous}; then {note}"
        # The files moved into the package: the recorded command writes (and resumes) there now.
        blob["command"] = blob["command"].replace("--out checkpoints/", "--out flowlib/checkpoints/")
        blob["grey_levels"] = grey_levels(blob)
        blob.pop("levels", None)  # one word, one meaning: "levels" said grey levels here, scales in kwargs
        blob.pop(CHECKSUM_KEY, None)  # it hashes the key paths too: 'checksum' records the new one
        if dry_run:
            print(f"{path.name}: would write ({note})")
            continue
        with atomic_write(path, "wb") as f:
            torch.save(blob, f)
        print(f"{path.name}: written ({note}); now run 'checksum'")


def _renamed(blob: dict) -> str:
    return ", ".join(f"{k} -> {v}" for k, v in RENAMED.items() if v in blob["kwargs"]) or "none"


# -- 3. verify: today's files and code against the reference --------------------------------------
def verify(folder: Path, ref_path: Path) -> None:
    from flowlib.pretrained import load_pretrained

    ref = json.loads(ref_path.read_text())
    for path in sorted(folder.glob("*.pt")):
        blob = torch.load(path, map_location="cpu", weights_only=True)
        diff = _max_difference(figures(load_pretrained(path), blob), ref["models"][path.stem], path.stem)
        print(f"{path.name}: ok, max |difference| {diff:.2e} nats")


def _max_difference(got: dict, want: dict, name: str) -> float:
    worst = 0.0
    for key, value in got.items():
        if value["sha256"] != want[key]["sha256"]:
            raise SystemExit(f"{name}: the {key} input is not the recorded one (sha256 differs)")
        a = torch.tensor(value["log_prob_continuous"], dtype=torch.float64)
        b = torch.tensor(want[key]["log_prob_continuous"], dtype=torch.float64)
        d = float((a - b).abs().max())
        print(f"{name} [{key}]: max |log p_Y new - old| = {d:.3e} nats over {a.numel()} images", flush=True)
        if not d <= TOLERANCE:
            raise SystemExit(f"{name}: the {key} figures moved by {d:.3e} nats > {TOLERANCE:g}")
        worst = max(worst, d)
    return worst


# -- 4. checksum: record the tensors' checksum in each file, and the folder's manifest -------------
def checksum(folder: Path, force: bool = False) -> None:
    import io

    from flowlib._integrity import CHECKSUM_KEY, IntegrityError, require_finite, state_checksum
    from flowlib._io import atomic_write
    from flowlib.pretrained import MANIFEST, record_in_manifest

    (folder / MANIFEST).unlink(missing_ok=True)  # written anew: exactly the files of the folder

    entries = {}
    for path in sorted(folder.glob("*.pt")):
        blob = torch.load(path, map_location="cpu", weights_only=True)
        try:
            require_finite(blob, path, "convert_checkpoints checksum", "retrain or restore the file")
        except IntegrityError as err:
            raise SystemExit(str(err)) from None
        digest, recorded = state_checksum(blob), blob.get(CHECKSUM_KEY)
        if recorded is not None and recorded != digest and not force:
            raise SystemExit(f"{path.name}: its tensors no longer match the checksum recorded in it (a "
                             f"corrupted file?); restore it, or pass --force if they were changed on purpose")
        if recorded != digest:
            new = {**{k: v for k, v in blob.items() if k != CHECKSUM_KEY}, CHECKSUM_KEY: digest}
            buffer = io.BytesIO()
            torch.save(new, buffer)
            back = torch.load(io.BytesIO(buffer.getvalue()), map_location="cpu", weights_only=True)
            same = back.keys() == new.keys() and all(
                torch.equal(back["state_dict"][k], v) and back["state_dict"][k].dtype == v.dtype
                for k, v in blob["state_dict"].items()) and state_checksum(back) == digest
            if not same:
                raise SystemExit(f"{path.name}: the rewritten file does not read back the same; "
                                 f"nothing written")
            with atomic_write(path, "wb") as f:
                f.write(buffer.getvalue())
            print(f"{path.name}: recorded {CHECKSUM_KEY} {digest[:16]}...")
        else:
            print(f"{path.name}: {CHECKSUM_KEY} already recorded")
        entries[path.stem] = record_in_manifest(path)
    print(f"wrote {folder / MANIFEST} ({len(entries)} files)")


# -- helpers ---------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _commit(folder: Path) -> str:
    """The git commit of the checkout holding ``folder`` ('unknown' outside one)."""
    import subprocess

    run = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    return run.stdout.strip() or "unknown"


def _write_json(path: Path, record: dict) -> None:
    from flowlib._io import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["reference", "convert", "verify", "checksum"])
    p.add_argument("--checkpoints", type=Path, default=None,
                   help="folder of the .pt files (default: flowlib/checkpoints)")
    p.add_argument("--reference", type=Path, default=REFERENCE)
    p.add_argument("--dry-run", action="store_true", help="convert and check, write nothing")
    p.add_argument("--force", action="store_true",
                   help="checksum: re-record a file whose tensors no longer match its recorded checksum")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = args.checkpoints or ROOT / "flowlib" / "checkpoints"
    if args.command == "reference":
        reference(folder, args.reference)
    elif args.command == "convert":
        convert(folder, args.reference, args.dry_run)
    elif args.command == "checksum":
        checksum(folder, args.force)
    else:
        verify(folder, args.reference)


if __name__ == "__main__":
    sys.exit(main())
