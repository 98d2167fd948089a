"""The shipped image-flow checkpoints (flowlib/checkpoints/*.pt) load safely and keep their figures.

Each file must load with ``torch.load(..., weights_only=True)`` (so it runs no code), load by
its name through :func:`flowlib.pretrained.load_pretrained`, rebuild through the builder it
names with today's keywords (no DeprecationWarning), give a finite log-likelihood on a few
MNIST test images (with sensible bits/dim), stay under 10 MB, and have its row in
flowlib/checkpoints/README.md. A conditional file (Glow's class-conditional model, or a flow
conditioned on the observed part of an image for inpainting) is scored with the contexts it was
tested with: the labels, or the inpainting masks drawn from the seeds its record names; its
context must matter (the true context scores higher than a shuffled one), and a class-conditional
file still classifies by Bayes' rule about as well as recorded.

And the map is the one that was trained: for the files converted once to today's layout
(``CONVERTED``, the three unconditional MNIST flows), in float64, the continuous log-density of
fixed inputs equals the figure recorded from the file before its conversion
(``tests/checkpoint_reference.json``, written by ``scripts/convert_checkpoints.py reference``)
within 1e-6 nats per image. The noise input needs no data set, so that check runs everywhere;
the MNIST one (256 test images, fixed dequantization noise) runs where MNIST is (conftest sets
``FLOWLIB_DATA`` to ../shared/data), and checks the SHA-256 of its input first.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from scripts_loader import load_script

from flowlib import image_models
from flowlib._checks import FlowInputError
from flowlib.conditional import classify
from flowlib.data.images import DatasetError, load_digits, load_images, pad_to
from flowlib.inpainting import inpainting_context, inpainting_masks
from flowlib.pretrained import BUILDERS, builder, checkpoint_info, load_pretrained, shipped_checkpoints

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "flowlib" / "checkpoints"
#: Every shipped file; the image flows among them (the field flows of lecture 9, builder
#: ``glow_field``, have tests of their own in tests/test_field_checkpoints.py).
FILES = sorted(FOLDER.glob("*.pt"))
CHECKPOINTS = [p for p in FILES
               if torch.load(p, map_location="cpu", weights_only=True)["builder"] != "glow_field"]
REFERENCE = json.loads((Path(__file__).parent / "checkpoint_reference.json").read_text())
#: Files converted once by scripts/convert_checkpoints.py, with float64 figures recorded before the
#: conversion; every other file is written, as it is, by scripts/train_image_flow.py.
CONVERTED = [p for p in CHECKPOINTS if p.stem in REFERENCE["models"]]
MAX_BYTES = 10 * 1024 * 1024
OLD_KEYWORDS = {"levels", "steps", "bins", "coupling"}
CONVERT = load_script("convert_checkpoints")


def _rebuild(path: Path) -> tuple[dict, image_models.ImageFlowModel]:
    """The loading recipe, written out."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = builder(blob["builder"])(**blob["kwargs"])  # the fixed table, never a name looked up
    model.load_state_dict(blob["state_dict"])
    return blob, model.eval()


def _test_pairs(blob: dict, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images of the file's data set (padded as in training) and their labels."""
    if blob["data"] == "digits":
        x, y = load_digits("test")
    else:
        try:
            x, y = load_images(blob["data"], "test", download=False)
        except DatasetError as err:
            pytest.skip(f"the {blob['data']} test files are not available here ({type(err).__name__}); set "
                        f"FLOWLIB_DATA to a folder holding {blob['data']}/ with the original IDX files")
    x, y = x[:n], y[:n]
    return (pad_to(x, blob["pad"]) if blob.get("pad") else x), y.long()


def _test_images(blob: dict, n: int = 8) -> torch.Tensor:
    return _test_pairs(blob, n)[0]


def _kind(blob: dict) -> str:
    """"classes" (p(x | label)), "inpaint" (p(x | observed pixels, mask)) or "plain"."""
    if blob["kwargs"].get("classes"):
        return "classes"
    return "inpaint" if blob["kwargs"].get("context_shape") is not None else "plain"


def _test_batch(blob: dict, n: int = 8) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Test images and the contexts they were tested with: the labels, the inpainting contexts of
    the masks drawn from the test seed the file records (the first n of the script's masks), or None."""
    x, y = _test_pairs(blob, n)
    kind = _kind(blob)
    if kind == "classes":
        return x.float(), y
    if kind == "inpaint":
        seed = blob["metrics"]["inpaint_seeds"]["test"]
        masks = inpainting_masks(x.shape[0], size=x.shape[-1], generator=torch.Generator().manual_seed(seed))
        return x.float(), inpainting_context(x.float(), masks, blob["grey_levels"]).float()
    return x, None


def test_some_checkpoints_are_shipped() -> None:
    assert CHECKPOINTS, "no flowlib/checkpoints/*.pt: train them with scripts/train_image_flow.py"
    # importlib.resources finds the same files as the folder listing, and every one has figures.
    assert sorted(shipped_checkpoints()) == [p.stem for p in FILES]
    # The three converted files are all still there (the others came later, from the script).
    assert [p.stem for p in CONVERTED] == sorted(REFERENCE["models"])
    assert not (ROOT / "checkpoints").exists() or not list((ROOT / "checkpoints").glob("*.pt"))


@pytest.mark.parametrize("path", CHECKPOINTS, ids=[p.name for p in CHECKPOINTS])
def test_size_and_format(path: Path) -> None:
    assert path.stat().st_size <= MAX_BYTES, f"{path.name} is {path.stat().st_size / 2**20:.1f} MiB"
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert blob["format"] == "flowlib.pretrained/1"
    assert blob["builder"] in BUILDERS
    for key in ("test_bpd", "steps", "parameters", "train_seconds"):
        assert key in blob["metrics"]
    # One word, one meaning: today's keywords only.
    assert not OLD_KEYWORDS & set(blob["kwargs"]), blob["kwargs"]
    assert "levels" not in blob and blob["grey_levels"] == 256
    if path in CONVERTED:  # converted once, and the file says so
        assert "scripts/convert_checkpoints.py" in blob["converted"]
    else:  # written as it is by the training script, which records its own command
        assert "converted" not in blob and blob["command"].startswith("python scripts/train_image_flow.py ")
    kind = _kind(blob)
    assert ("--classes" in blob["command"].split()) == (kind == "classes")
    assert ("--inpaint" in blob["command"].split()) == (kind == "inpaint")
    if kind == "classes":
        assert blob["kwargs"]["classes"] == 10 and 0.0 <= blob["metrics"]["test_accuracy"] <= 1.0
    if kind == "inpaint":
        c, h, w = blob["kwargs"]["shape"]
        assert blob["kwargs"]["context_shape"] == [2 * c, h, w]
        assert set(blob["metrics"]["inpaint_seeds"]) == {"train", "val", "test"}


@pytest.mark.parametrize("path", CHECKPOINTS, ids=[p.name for p in CHECKPOINTS])
def test_loads_by_name_without_deprecation(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        model = load_pretrained(path.stem)
        info = checkpoint_info(path.stem)
    assert not model.training and "state_dict" not in info
    _, again = _rebuild(path)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_unknown_name_says_what_is_shipped() -> None:
    with pytest.raises(FileNotFoundError, match="glow_mnist"):
        load_pretrained("no_such_model")


@pytest.mark.parametrize("path", CHECKPOINTS, ids=[p.name for p in CHECKPOINTS])
def test_rebuilds_and_scores_test_images(path: Path) -> None:
    blob, model = _rebuild(path)
    # ActNorm's flag came with the weights: nothing may re-initialise on this batch.
    flags = [b for name, b in model.named_buffers() if name.endswith("initialized")]
    assert all(bool(f) for f in flags)
    x, context = _test_batch(blob)
    assert model.conditional == (context is not None)
    with torch.no_grad():
        log_p = model.log_prob(x) if context is None else model.log_prob(x, context)
        bpd = model.bits_per_dim(x, context=context)
    assert log_p.shape == (x.shape[0],) and torch.isfinite(log_p).all()
    # A trained model is far better than uniform noise (8 bits/dim) and not absurdly good; its
    # figure on 8 images is near the recorded one (a loose check: few images, one draw each).
    assert 0.3 < float(bpd.mean()) < math.log2(blob["grey_levels"])
    assert abs(float(bpd.mean()) - blob["metrics"]["test_bpd"]) < 0.5


KINDS = {p: _kind(torch.load(p, map_location="cpu", weights_only=True)) for p in CHECKPOINTS}
CONDITIONAL = [p for p in CHECKPOINTS if KINDS[p] != "plain"]


@pytest.mark.parametrize("path", CONDITIONAL, ids=[p.name for p in CONDITIONAL])
def test_a_conditional_file_reads_its_context(path: Path) -> None:
    """The true contexts score the test images higher than the same contexts shuffled among them
    (each image with another's label, or another image's observed pixels); a missing context is
    refused; samples come in the image's shape for one context for all or one per sample."""
    blob, model = _rebuild(path)
    x, context = _test_batch(blob, 32)
    torch.manual_seed(0)
    u = torch.rand_like(x)  # the same dequantisation for both scores
    if _kind(blob) == "inpaint":
        shuffled = context.roll(1, dims=0)
    else:  # every image with another class
        shuffled = (context + 1 + torch.arange(32) % 9) % 10
    assert not torch.equal(shuffled, context)
    with torch.no_grad():
        right = model.log_prob_continuous((x + u) / blob["grey_levels"], context)
        wrong = model.log_prob_continuous((x + u) / blob["grey_levels"], shuffled)
    assert float(right.mean()) > float(wrong.mean()), (float(right.mean()), float(wrong.mean()))
    with pytest.raises(FlowInputError):
        model.log_prob(x)
    with torch.no_grad():
        one = model.sample_levels(3, temperature=0.7, context=context[:1] if _kind(blob) == "inpaint" else 3)
        each = model.sample_levels(3, temperature=0.7, context=context[:3])
    for s in (one, each):
        assert s.shape == (3, *model.event_shape) and 0 <= int(s.min()) and int(s.max()) < blob["grey_levels"]


CLASSES = [p for p in CHECKPOINTS if KINDS[p] == "classes"]


@pytest.mark.parametrize("path", CLASSES, ids=[p.name for p in CLASSES])
def test_a_class_conditional_file_classifies_about_as_recorded(path: Path) -> None:
    """Bayes' rule on 100 test images (one dequantisation draw per class): the accuracy is near the
    recorded one on 2000 (binomial spread at most 0.05 at 100 images; the margin is 0.15) and above
    chance."""
    blob, model = _rebuild(path)
    assert _kind(blob) == "classes"
    x, y = _test_batch(blob, 100)
    torch.manual_seed(0)
    with torch.no_grad():
        accuracy = float((classify(model, x) == y).float().mean())
    assert accuracy >= blob["metrics"]["test_accuracy"] - 0.15 and accuracy > 0.1, accuracy  # chance: 0.1


def _check_figures(name: str, key: str, y: torch.Tensor) -> None:
    want = REFERENCE["models"][name][key]
    assert CONVERT.sha256(y) == want["sha256"], f"the {key} input is not the recorded one: see its recipe"
    got = CONVERT.log_densities(load_pretrained(name), y)
    diff = (got - torch.tensor(want["log_prob_continuous"], dtype=torch.float64)).abs()
    assert got.shape == (CONVERT.N_IMAGES,) and float(diff.max()) <= 1e-6, f"moved by {float(diff.max()):.3e}"


@pytest.mark.parametrize("path", CONVERTED, ids=[p.name for p in CONVERTED])
def test_same_map_as_before_on_noise_images(path: Path) -> None:
    shape = tuple(checkpoint_info(path.stem)["kwargs"]["shape"])
    _check_figures(path.stem, "noise", CONVERT.noise_input(shape))


@pytest.mark.parametrize("path", CONVERTED, ids=[p.name for p in CONVERTED])
def test_same_map_as_before_on_mnist_test_images(path: Path) -> None:
    blob = checkpoint_info(path.stem)
    _test_images(blob, 1)  # skips, saying why, where the data set is missing
    _check_figures(path.stem, "mnist", CONVERT.mnist_input(blob))


@pytest.mark.parametrize("path", CHECKPOINTS, ids=[p.name for p in CHECKPOINTS])
def test_script_loader_matches_the_recipe(path: Path) -> None:
    model = load_script("train_image_flow").load_pretrained(path)
    _, again = _rebuild(path)
    assert not model.training
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("path", CHECKPOINTS, ids=[p.name for p in CHECKPOINTS])
def test_recorded_in_readme(path: Path) -> None:
    readme = (FOLDER / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith(f"| `{path.name}` |")]
    assert len(rows) == 1, f"{path.name} needs exactly one row in flowlib/checkpoints/README.md"
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert f"{blob['metrics']['test_bpd']:.3f}" in rows[0]
    assert "scripts/train_image_flow.py" in rows[0] and blob["command"] in rows[0]


#: The converted file the old-layout tests start from (glow_mnist.pt was retrained in today's layout).
OLD_LAYOUT = "realnvp_mnist.pt"


def _old_keys(blob: dict) -> dict[str, torch.Tensor]:
    """The file's state dict with the keys it had before RENAMED_ATTRIBUTES (MultiScale ``steps.*``)."""
    back = {new: old for old, new in CONVERT.key_renames(load_pretrained(FOLDER / OLD_LAYOUT)).items()}
    assert back == {"flow.flows.1.flows.": "flow.flows.1.steps."}
    state, moved = CONVERT.rename_keys(blob["state_dict"], back)
    assert len(moved) == 104
    return state


def test_a_file_of_the_old_layout_still_loads_and_a_broken_one_says_why(tmp_path: Path) -> None:
    """Old keywords warn, and old sliced couplings (no mask stored) and MultiScale's old key names
    (``steps.<scale>.*``) still load; tensors that do not fit fail with the script that converts
    a file."""
    blob = torch.load(FOLDER / OLD_LAYOUT, map_location="cpu", weights_only=True)
    back = {new: old for old, new in CONVERT.RENAMED.items()}
    blob["kwargs"] = {back.get(k, k): v for k, v in blob["kwargs"].items()}
    blob["state_dict"] = {k: v for k, v in _old_keys(blob).items() if not k.endswith(".mask")}
    blob.pop("tensor_sha256")  # files of the old layout were written before checksums were recorded
    torch.save(blob, tmp_path / "old.pt")
    with pytest.warns(DeprecationWarning) as record:
        old = load_pretrained(tmp_path / "old.pt")
    said = " ".join(str(w.message) for w in record)
    assert all(f"use {new}=" in said for new in ("scales", "depth", "grey_levels")), said
    again = load_pretrained(OLD_LAYOUT.removesuffix(".pt"))
    for (k, a), (_, b) in zip(old.state_dict().items(), again.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), k
    blob["state_dict"].pop(next(k for k in blob["state_dict"] if "conditioner" in k))
    torch.save(blob, tmp_path / "broken.pt")
    with pytest.warns(DeprecationWarning), pytest.raises(FlowInputError, match="convert_checkpoints"):
        load_pretrained(tmp_path / "broken.pt")


def test_conversion_copies_by_key_and_fails_loudly() -> None:
    fresh = {"a.weight": torch.zeros(2), "c.mask": torch.ones(3)}
    state, computed = CONVERT.transfer({"a.weight": torch.full((2,), 5.0)}, fresh)
    assert torch.equal(state["a.weight"], torch.full((2,), 5.0)) and computed == ["c.mask"]
    with pytest.raises(SystemExit, match="old shape"):
        CONVERT.transfer({"a.weight": torch.zeros(3)}, fresh)
    with pytest.raises(SystemExit, match="the old file has 'b.bias'"):
        CONVERT.transfer({"a.weight": torch.zeros(2), "b.bias": torch.zeros(1)}, fresh)
    with pytest.raises(SystemExit, match="the new model has 'a.weight'"):
        CONVERT.transfer({}, {"a.weight": torch.zeros(2)})
    assert CONVERT.new_kwargs({"levels": 2, "steps": 4, "bins": 256, "coupling": "split", "hidden": 8}) == {
        "scales": 2, "depth": 4, "grey_levels": 256, "hidden": 8}
    state, moved = CONVERT.rename_keys({"m.steps.0.w": torch.ones(1), "m.priors.0.w": torch.zeros(1)},
                                       {"m.steps.": "m.flows."})
    assert list(state) == ["m.flows.0.w", "m.priors.0.w"] and moved == {"m.steps.0.w": "m.flows.0.w"}
    with pytest.raises(SystemExit, match="both 'm.steps.0.w' and 'm.flows.0.w'"):
        CONVERT.rename_keys({"m.steps.0.w": torch.ones(1), "m.flows.0.w": torch.ones(1)},
                            {"m.steps.": "m.flows."})


def test_convert_renames_the_keys_of_a_converted_file_once_and_changes_no_weight(tmp_path: Path) -> None:
    """A file converted before the MultiScale rename (keys ``steps.<scale>.*``) gets the new keys,
    every tensor bit for bit, a ``converted`` entry saying so, and no stale checksum; a second
    ``convert`` leaves it alone; ``checksum`` then gives exactly the shipped file's tensors."""
    from flowlib._integrity import CHECKSUM_KEY, with_checksum

    shipped = torch.load(FOLDER / OLD_LAYOUT, map_location="cpu", weights_only=True)
    _test_images(shipped, 1)  # convert checks the MNIST figures too: skips, saying why, without MNIST
    blob = {**shipped, "state_dict": _old_keys(shipped)}
    blob["converted"] = blob["converted"].rsplit("; then ", 1)[0]  # as written by the first conversion
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save(with_checksum(blob), folder / OLD_LAYOUT)
    CONVERT.main(["convert", "--checkpoints", str(folder)])
    after = torch.load(folder / OLD_LAYOUT, weights_only=True)
    assert CHECKSUM_KEY not in after and list(after["state_dict"]) == list(shipped["state_dict"])
    for k, v in shipped["state_dict"].items():
        assert torch.equal(after["state_dict"][k], v) and after["state_dict"][k].dtype == v.dtype, k
    assert after["converted"].startswith(blob["converted"] + "; then converted ")
    said = "state-dict keys flow.flows.1.steps.* -> flow.flows.1.flows.* renamed (104 tensors"
    assert said in after["converted"]
    raw = (folder / OLD_LAYOUT).read_bytes()
    CONVERT.main(["convert", "--checkpoints", str(folder)])  # again: nothing to do
    assert (folder / OLD_LAYOUT).read_bytes() == raw
    CONVERT.main(["checksum", "--checkpoints", str(folder)])
    assert torch.load(folder / OLD_LAYOUT, weights_only=True)[CHECKSUM_KEY] == shipped[CHECKSUM_KEY]
    state = dict(blob["state_dict"])  # a tensor changed, the checksum of the file kept: refused
    state["flow.flows.1.steps.0.flows.0.bias"] = state["flow.flows.1.steps.0.flows.0.bias"] + 1.0
    torch.save({**blob, "state_dict": state, CHECKSUM_KEY: with_checksum(blob)[CHECKSUM_KEY]},
               folder / OLD_LAYOUT)
    with pytest.raises(SystemExit, match="no longer match the checksum"):
        CONVERT.main(["convert", "--checkpoints", str(folder)])


# -- integrity (issue 12, item 5): checksums, the manifest, non-finite weights ----------------------
MANIFEST = FOLDER / "MANIFEST.json"


def _flip_inside_a_tensor(raw: bytes, blob: dict, key: str) -> bytes:
    """``raw`` (a .pt file) with one byte flipped in the middle of the record of tensor ``key``.

    The tensor's bytes are found in the (uncompressed) zip archive, so the pickle, the zip
    directory and every other record stay valid: only the weight changes.
    """
    data = blob["state_dict"][key].contiguous().numpy().tobytes()
    at = raw.find(data)
    assert at > 0 and raw.find(data, at + 1) < 0, "the tensor's bytes must occur once in the file"
    middle = at + len(data) // 2
    return raw[:middle] + bytes([raw[middle] ^ 0x40]) + raw[middle + 1:]


def _largest_weight(blob: dict) -> str:
    return max((k for k, v in blob["state_dict"].items() if v.is_floating_point()),
               key=lambda k: blob["state_dict"][k].numel())


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_each_shipped_file_records_its_tensor_checksum_and_the_manifest_its_bytes(path: Path) -> None:
    from flowlib._integrity import CHECKSUM_KEY, file_sha256, state_checksum

    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert blob[CHECKSUM_KEY] == state_checksum(blob)
    entry = json.loads(MANIFEST.read_text())["checkpoints"][path.stem]
    assert entry["file"] == path.name and entry["file_sha256"] == file_sha256(path)
    assert entry["tensor_sha256"] == blob[CHECKSUM_KEY]
    assert entry["builder"] == blob["builder"] and entry["kwargs"] == blob["kwargs"]
    assert entry["metrics"] == blob["metrics"]


def test_the_manifest_lists_exactly_the_shipped_files() -> None:
    assert sorted(json.loads(MANIFEST.read_text())["checkpoints"]) == [p.stem for p in FILES]


def test_a_flipped_byte_inside_a_tensor_record_is_refused(tmp_path: Path) -> None:
    raw = (FOLDER / "nice_mnist.pt").read_bytes()
    blob = torch.load(FOLDER / "nice_mnist.pt", weights_only=True)
    bad = tmp_path / "nice_copy.pt"
    bad.write_bytes(_flip_inside_a_tensor(raw, blob, _largest_weight(blob)))
    with pytest.raises(FlowInputError, match=r"load_pretrained: the tensors of .*nice_copy\.pt do not match "
                                             r"the checksum.*scripts/train_image_flow\.py"):
        load_pretrained(bad)
    with pytest.raises(FlowInputError, match=r"nice_copy\.pt"):
        checkpoint_info(bad)


def test_a_changed_shipped_file_is_refused_by_its_manifest(tmp_path: Path, monkeypatch) -> None:
    """A shipped file whose bytes differ from MANIFEST.json (even with a consistent checksum)."""
    import shutil

    import flowlib.pretrained as pretrained

    folder = tmp_path / "checkpoints"
    shutil.copytree(FOLDER, folder)
    blob = torch.load(folder / "glow_mnist.pt", weights_only=True)
    (folder / "glow_mnist.pt").write_bytes(_flip_inside_a_tensor((folder / "glow_mnist.pt").read_bytes(),
                                                                 blob, _largest_weight(blob)))
    monkeypatch.setattr(pretrained, "_folder", lambda: folder)
    with pytest.raises(FlowInputError, match=r"load_pretrained: glow_mnist\.pt is not the file shipped with "
                                             r"flowlib .*MANIFEST\.json.*re-install flowlib"):
        load_pretrained("glow_mnist")
    assert load_pretrained("nice_mnist").event_shape == (1, 28, 28)  # the others are untouched
    (folder / "MANIFEST.json").unlink()
    with pytest.raises(FlowInputError, match=r"MANIFEST\.json.*re-install flowlib"):
        load_pretrained("nice_mnist")


@pytest.mark.parametrize("recheck", [True, False], ids=["checksum recomputed", "no checksum"])
def test_a_nan_weight_is_refused_naming_the_tensor(tmp_path: Path, recheck: bool) -> None:
    from flowlib._integrity import CHECKSUM_KEY, with_checksum

    blob = torch.load(FOLDER / "glow_mnist.pt", weights_only=True)
    key = _largest_weight(blob)
    blob["state_dict"][key].view(-1)[7] = float("nan")
    blob = with_checksum(blob) if recheck else {k: v for k, v in blob.items() if k != CHECKSUM_KEY}
    torch.save(blob, tmp_path / "nan.pt")
    with pytest.raises(FlowInputError, match=rf"load_pretrained: .*nan\.pt holds non-finite values .*"
                                             rf"state_dict/{key}"):
        load_pretrained(tmp_path / "nan.pt")


def test_checksum_subcommand_records_checksums_and_manifest_without_changing_a_weight(tmp_path: Path) -> None:
    import shutil

    from flowlib._integrity import CHECKSUM_KEY, file_sha256

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for p in FILES:  # the files as they were before checksums: no entry, no manifest
        blob = torch.load(p, weights_only=True)
        blob.pop(CHECKSUM_KEY, None)
        torch.save(blob, folder / p.name)
    shutil.copy(FOLDER / "README.md", folder)
    CONVERT.main(["checksum", "--checkpoints", str(folder)])
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    for p in FILES:
        before, after = torch.load(p, weights_only=True), torch.load(folder / p.name, weights_only=True)
        assert after[CHECKSUM_KEY] == before[CHECKSUM_KEY]
        assert {k: v for k, v in after.items() if k != "state_dict"} == \
            {k: v for k, v in before.items() if k != "state_dict"}
        for k, v in before["state_dict"].items():
            assert torch.equal(after["state_dict"][k], v) and after["state_dict"][k].dtype == v.dtype, k
        assert manifest["checkpoints"][p.stem]["file_sha256"] == file_sha256(folder / p.name)
    sums = {p.name: file_sha256(p) for p in folder.glob("*.pt")}
    CONVERT.main(["checksum", "--checkpoints", str(folder)])  # again: nothing changes
    assert {p.name: file_sha256(p) for p in folder.glob("*.pt")} == sums
    assert json.loads((folder / "MANIFEST.json").read_text()) == manifest


# -- tampered and truncated files (issue 12, item 10): FlowInputError naming the file -------------
def _tampered(tmp_path: Path, change) -> Path:
    from flowlib._integrity import with_checksum

    blob = torch.load(FOLDER / "nice_mnist.pt", weights_only=True)
    change(blob)
    path = tmp_path / "tampered.pt"
    torch.save(with_checksum(blob), path)
    return path


TAMPERINGS = {
    "kwargs not a dict": (lambda b: b.update(kwargs=[1, 2]), r"kwargs"),
    "no kwargs": (lambda b: b.pop("kwargs"), r"kwargs"),
    "no state_dict": (lambda b: b.pop("state_dict"), r"state_dict"),
    "state_dict a list": (lambda b: b.update(state_dict=[torch.zeros(1)]), r"state_dict"),
    "a weight not a tensor": (lambda b: b["state_dict"].update({next(iter(b["state_dict"])): 3.0}),
                              r"state_dict"),
    "unknown keyword": (lambda b: b["kwargs"].update(colour="red"), r"colour"),
    "hidden a string": (lambda b: b["kwargs"].update(hidden="16"), r"hidden"),
    "hidden 10**7": (lambda b: b["kwargs"].update(hidden=10**7), r"hidden=10000000.*at most"),
    "hidden 0": (lambda b: b["kwargs"].update(hidden=0), r"hidden"),
    "huge image": (lambda b: b["kwargs"].update(shape=[1, 2**20, 2**20]), r"shape"),
    "too many parameters": (lambda b: b["kwargs"].update(hidden=4096, couplings=256, blocks=8),
                            r"parameters"),
    "builder not a str": (lambda b: b.update(builder=["nice_image"]), r"builder"),
    "format missing": (lambda b: b.pop("format"), r"flowlib\.pretrained/1"),
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_a_tampered_file_is_refused_naming_it(tmp_path: Path, name: str) -> None:
    import time

    change, said = TAMPERINGS[name]
    path = _tampered(tmp_path, change)
    t0 = time.perf_counter()
    with pytest.raises(FlowInputError, match=r"load_pretrained: .*tampered\.pt") as err:
        load_pretrained(path)
    assert time.perf_counter() - t0 < 5, "refused only after building (and allocating) the model"
    assert __import__("re").search(said, str(err.value)), str(err.value)


@pytest.mark.parametrize("keep", [0, 10, 1000, 0.5, 0.9, -1], ids=lambda k: f"keep {k}")
def test_a_truncated_file_is_refused_naming_it(tmp_path: Path, keep) -> None:
    raw = (FOLDER / "nice_mnist.pt").read_bytes()
    n = len(raw) - 1 if keep == -1 else (keep if isinstance(keep, int) else int(len(raw) * keep))
    path = tmp_path / "short.pt"
    path.write_bytes(raw[:n])
    for call in (load_pretrained, checkpoint_info):
        with pytest.raises(FlowInputError, match=r"short\.pt.*(re-download|truncated|not a)"):
            call(path)


def test_the_size_limits_are_documented() -> None:
    import flowlib.pretrained as pretrained

    for name, limit in pretrained.MAX_KWARGS.items():
        assert f"``{name}``" in pretrained.__doc__ and f"{limit:,}" in pretrained.__doc__, name
    assert f"{pretrained.MAX_PARAMETERS:,}" in pretrained.__doc__


def test_train_image_flow_writes_the_checksum_and_updates_a_manifest_beside_it(tmp_path: Path) -> None:
    """A file the training script writes verifies on load; in a folder with a manifest (the
    shipped folder), its entry is recorded there too, so a retrained shipped file loads by name."""
    from flowlib._integrity import CHECKSUM_KEY, file_sha256

    out = tmp_path / "tiny.pt"
    (tmp_path / "MANIFEST.json").write_text(json.dumps({"checkpoints": {"other": {"file": "other.pt"}}}))
    load_script("train_image_flow").main(["--model", "nice", "--data", "digits", "--minutes", "0.002",
                                          "--out", str(out), "--state", str(tmp_path / "state.pt"),
                                          "--set", "hidden=4", "--set", "couplings=2", "--iw-samples", "1",
                                          "--no-readme"])
    blob = torch.load(out, weights_only=True)
    assert CHECKSUM_KEY in blob and load_pretrained(out).event_shape == (1, 8, 8)
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())["checkpoints"]
    assert manifest["tiny"]["file_sha256"] == file_sha256(out) and "other" in manifest
