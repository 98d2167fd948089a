"""Checkpoints of conditional models and of the transformer flow: written by the script, rebuilt by
load_pretrained, and refused when their conditional keywords are out of bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scripts_loader import load_script

from flowlib import FlowInputError
from flowlib._integrity import with_checksum
from flowlib.data import load_digits
from flowlib.pretrained import checkpoint_info, load_pretrained
from flowlib.train import save_checkpoint


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """Three tiny files from the script, a few seconds of training each on the digits."""
    script, folder = load_script("train_image_flow"), tmp_path_factory.mktemp("pretrained")
    runs = {"classes": ["--model", "glow", "--classes", "--set", "hidden=8"],
            "inpaint": ["--model", "glow", "--inpaint", "--set", "hidden=8"],
            "tarflow": ["--model", "tarflow", "--set", "patch=2", "--set", "width=16", "--set", "heads=2"]}
    out = {}
    for name, options in runs.items():
        out[name] = folder / f"{name}.pt"
        script.main([*options, "--data", "digits", "--minutes", "0.03", "--out", str(out[name]),
                     "--no-readme", "--state", str(folder / f"{name}.fit.pt")])
    return out


def test_class_conditional_file(written):
    model = load_pretrained(written["classes"])
    assert model.conditional and model.context_shape == () and model.context_encoder.classes == 10
    metrics = checkpoint_info(written["classes"])["metrics"]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["accuracy_images"] == 2000
    x, y = load_digits("test")
    assert torch.isfinite(model.bits_per_dim(x[:8].float(), context=y[:8])).all()
    assert model.sample_levels(3, temperature=0.7, context=4).shape == (3, 1, 8, 8)


def test_inpainting_file(written):
    model = load_pretrained(written["inpaint"])
    assert model.conditional and model.context_shape == (2, 8, 8)
    info = checkpoint_info(written["inpaint"])["metrics"]
    assert info["inpaint_seeds"] == {"train": 0, "val": 1001, "test": 1002}


def test_transformer_flow_file(written):
    model = load_pretrained(written["tarflow"])
    assert not model.conditional and checkpoint_info(written["tarflow"])["builder"] == "tarflow_image"
    x, _ = load_digits("test")
    assert torch.isfinite(model.bits_per_dim(x[:4].float())).all()


@pytest.mark.parametrize("change, match", [
    ({"classes": 10**6}, "classes"),
    ({"classes": True}, "classes"),
    ({"context_shape": [2, 8]}, "context_shape"),
    ({"context_shape": [2, 8, 10**5]}, r"context_shape\[2\]"),
])
def test_conditional_keywords_are_bounded(written, tmp_path, change, match):
    blob = torch.load(written["classes"], map_location="cpu", weights_only=True)
    blob["kwargs"] = {**blob["kwargs"], **change}
    blob.pop("tensor_sha256", None)
    bad = tmp_path / "bad.pt"
    save_checkpoint(with_checksum(blob), bad)
    with pytest.raises(FlowInputError, match=match):
        load_pretrained(bad)


def test_transformer_sizes_are_bounded(written, tmp_path):
    blob = torch.load(written["tarflow"], map_location="cpu", weights_only=True)
    blob["kwargs"] = {**blob["kwargs"], "width": 4096, "layers": 64}
    blob.pop("tensor_sha256", None)
    bad = tmp_path / "huge.pt"
    save_checkpoint(with_checksum(blob), bad)
    with pytest.raises(FlowInputError, match="MAX_PARAMETERS"):
        load_pretrained(bad)
