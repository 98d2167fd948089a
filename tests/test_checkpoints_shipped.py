"""The shipped image-flow checkpoints (checkpoints/*.pt) load safely and still work.

Each file must load with ``torch.load(..., weights_only=True)`` (so it runs no code), rebuild
through the builder it names, give a finite log-likelihood on a few MNIST test images (with
sensible bits/dim), stay under 10 MB, and have its row in checkpoints/README.md.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from flowlib import image_models
from flowlib.data.images import DatasetError, load_digits, load_images, pad_to

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = sorted((ROOT / "checkpoints").glob("*.pt"))
MAX_BYTES = 10 * 1024 * 1024


def _script():
    """scripts/train_image_flow.py as a module (scripts/ is not a package)."""
    path = ROOT / "scripts" / "train_image_flow.py"
    spec = importlib.util.spec_from_file_location("train_image_flow", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rebuild(path: Path) -> tuple[dict, image_models.ImageFlowModel]:
    """The loading recipe the lectures use, written out."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = getattr(image_models, blob["builder"])(**blob["kwargs"])
    model.load_state_dict(blob["state_dict"])
    return blob, model.eval()


def _test_images(blob: dict, n: int = 8) -> torch.Tensor:
    if blob["data"] == "digits":
        return load_digits("test")[0][:n]
    try:
        x = load_images(blob["data"], "test", download=False)[0][:n]
    except DatasetError as err:
        pytest.skip(f"the {blob['data']} test files are not available here ({type(err).__name__}); set "
                    f"FLOWLIB_DATA to a folder holding {blob['data']}/ with the original IDX files")
    return pad_to(x, blob["pad"]) if blob.get("pad") else x


def test_some_checkpoints_are_shipped() -> None:
    assert CHECKPOINTS, "no checkpoints/*.pt: train them with scripts/train_image_flow.py"


@pytest.mark.parametrize("path", CHECKPOINTS, ids=[p.name for p in CHECKPOINTS])
def test_size_and_format(path: Path) -> None:
    assert path.stat().st_size <= MAX_BYTES, f"{path.name} is {path.stat().st_size / 2**20:.1f} MiB"
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert blob["format"] == "flowlib.pretrained/1"
    assert blob["builder"] in {"nice_image", "realnvp_image", "glow_image"}
    for key in ("test_bpd", "steps", "parameters", "train_seconds"):
        assert key in blob["metrics"]


@pytest.mark.parametrize("path", CHECKPOINTS, ids=[p.name for p in CHECKPOINTS])
def test_rebuilds_and_scores_test_images(path: Path) -> None:
    blob, model = _rebuild(path)
    # ActNorm's flag came with the weights: nothing may re-initialise on this batch.
    flags = [b for name, b in model.named_buffers() if name.endswith("initialized")]
    assert all(bool(f) for f in flags)
    x = _test_images(blob)
    with torch.no_grad():
        log_p = model.log_prob(x)
        bpd = model.bits_per_dim(x)
    assert log_p.shape == (x.shape[0],) and torch.isfinite(log_p).all()
    # A trained model is far better than uniform noise (8 bits/dim) and not absurdly good; its
    # figure on 8 images is near the recorded one (a loose check: few images, one draw each).
    assert 0.3 < float(bpd.mean()) < math.log2(blob["levels"])
    assert abs(float(bpd.mean()) - blob["metrics"]["test_bpd"]) < 0.5


@pytest.mark.parametrize("path", CHECKPOINTS, ids=[p.name for p in CHECKPOINTS])
def test_script_loader_matches_the_recipe(path: Path) -> None:
    model = _script().load_pretrained(path)
    _, again = _rebuild(path)
    assert not model.training
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("path", CHECKPOINTS, ids=[p.name for p in CHECKPOINTS])
def test_recorded_in_readme(path: Path) -> None:
    readme = (ROOT / "checkpoints" / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith(f"| `{path.name}` |")]
    assert len(rows) == 1, f"{path.name} needs exactly one row in checkpoints/README.md"
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert f"{blob['metrics']['test_bpd']:.3f}" in rows[0]
    assert "scripts/train_image_flow.py" in rows[0]
