"""The shipped field flows of lecture 9 (flowlib/checkpoints/glow_lensing*.pt) load safely and keep
their figures.

Each file is written, as it is, by scripts/train_field_flow.py (its command recorded), loads by
name with ``weights_only=True`` and today's keywords, and on fresh simulated maps (never seen in
training: other seeds) scores what it recorded, in nats per pixel, and less than the simulator's
exact log-density on average (the gap is KL(p || q) >= 0). The conditional file reads its
parameters: the true (sigma_8, Omega_m) score the maps higher than shuffled ones, and a missing
context is refused. Checksums and the manifest are checked for every shipped file in
tests/test_checkpoints_shipped.py.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from scripts_loader import load_script

from flowlib._checks import FlowInputError
from flowlib.data.lensing import convergence_log_prob
from flowlib.field_models import theta_context
from flowlib.pretrained import checkpoint_info, load_pretrained

FOLDER = Path(__file__).resolve().parents[1] / "flowlib" / "checkpoints"
FIELDS = [p for p in sorted(FOLDER.glob("*.pt"))
          if torch.load(p, map_location="cpu", weights_only=True)["builder"] == "glow_field"]
SCRIPT = load_script("train_field_flow")
SEED = 4242  # fresh maps: neither the training (0), validation (1001) nor test (1002) seed


def test_the_three_field_flows_of_lecture_9_are_shipped():
    assert [p.stem for p in FIELDS] == ["glow_lensing", "glow_lensing_augmented", "glow_lensing_theta"]


@pytest.mark.parametrize("path", FIELDS, ids=[p.name for p in FIELDS])
def test_format_record_and_readme_row(path: Path) -> None:
    assert path.stat().st_size <= 10 * 2**20
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert blob["format"] == "flowlib.pretrained/1" and blob["data"] == "lensing"
    assert blob["command"].startswith("python scripts/train_field_flow.py ") and "converted" not in blob
    for key in ("test_nats_per_pixel", "steps", "parameters", "train_seconds", "spectrum_mean_ratio",
                "spectrum_std_ratio", "offdiagonal_correlation_samples", "offdiagonal_correlation_maps"):
        assert key in blob["metrics"], key
    sim = blob["simulator"]
    conditional = "context_shape" in blob["kwargs"]
    assert ("--conditional" in blob["command"].split()) == sim["conditional"] == conditional
    assert ("--augment" in blob["command"].split()) == sim["augment"]
    rows = [r for r in (FOLDER / "README.md").read_text(encoding="utf-8").splitlines()
            if r.startswith(f"| `{path.name}` |")]
    assert len(rows) == 1, f"{path.name} needs exactly one row in flowlib/checkpoints/README.md"
    assert f"{blob['metrics']['test_nats_per_pixel']:.3f}" in rows[0] and blob["command"] in rows[0]


@pytest.mark.parametrize("path", FIELDS, ids=[p.name for p in FIELDS])
def test_scores_fresh_maps_as_recorded_and_below_the_exact_density(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        model = load_pretrained(path.stem)
    info = checkpoint_info(path.stem)
    sim = info["simulator"]
    assert not model.training
    assert all(bool(b) for name, b in model.named_buffers() if name.endswith("initialized"))
    maps, theta = SCRIPT.simulate(200, sim["size"], SEED, sim["conditional"], sim["noise"])
    context = None if theta is None else theta_context(theta).float()
    with torch.no_grad():
        log_q = model.log_prob(maps, context=context).double()
    per_pixel = float(log_q.mean()) / sim["size"] ** 2
    # The recorded figure is the mean over 1000 test maps; 200 fresh ones scatter by about 0.003.
    assert abs(per_pixel - info["metrics"]["test_nats_per_pixel"]) < 0.02, per_pixel
    exact = convergence_log_prob(maps, *(() if theta is None else (theta[:, 0], theta[:, 1])))
    gap = exact - log_q
    assert float(gap.mean()) > 3 * float(gap.std()) / math.sqrt(len(gap)), "a flow above the truth?"


def test_the_conditional_flow_reads_its_parameters() -> None:
    model = load_pretrained("glow_lensing_theta")
    maps, theta = SCRIPT.simulate(64, 32, SEED, True, 0.0)
    right, shuffled = theta_context(theta).float(), theta_context(theta.roll(1, dims=0)).float()
    with torch.no_grad():
        right_score, wrong_score = model.log_prob(maps, context=right), model.log_prob(maps, context=shuffled)
        assert float(right_score.mean()) > float(wrong_score.mean())
        one = model.sample(3, context=right[:1].expand(3, 2))
    assert one.shape == (3, 1, 32, 32) and torch.isfinite(one).all()
    with pytest.raises(FlowInputError):
        model.log_prob(maps)
