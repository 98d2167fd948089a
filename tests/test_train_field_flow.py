"""scripts/train_field_flow.py: a tiny run writes a file that flowlib.pretrained rebuilds, with figures."""

from __future__ import annotations

import torch
from scripts_loader import load_script

from flowlib.field_models import theta_context
from flowlib.pretrained import checkpoint_info, load_pretrained


def _script():
    return load_script("train_field_flow")


def test_augment_gives_the_eight_symmetries_of_the_square():
    maps = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4)
    out = _script().augment(maps)
    assert out.shape == (16, 1, 4, 4)
    distinct = {tuple(out[i].flatten().tolist()) for i in range(0, 16, 2)}
    assert len(distinct) == 8  # no two symmetries of this asymmetric map coincide
    assert torch.equal(out[:2], maps)


def test_a_tiny_run_writes_a_loadable_field_model(tmp_path):
    out = tmp_path / "field.pt"
    tiny = ["--size", "32", "--maps", "64", "--test-maps", "40", "--minutes", "0.02", "--batch", "16",
            "--eval-every", "5", "--warmup", "2", "--set", "hidden=8", "--set", "depth=1",
            "--state", str(tmp_path / "state.pt"), "--out", str(out), "--no-readme"]
    script = _script()
    blob = script.main(tiny)
    assert blob["builder"] == "glow_field" and blob["data"] == "lensing"
    metrics = checkpoint_info(out)["metrics"]
    assert len(metrics["spectrum_mean_ratio"]) == 6 and metrics["steps"] >= 1
    model = load_pretrained(out)
    with torch.no_grad():
        assert model.log_prob(torch.zeros(2, 1, 32, 32)).shape == (2,)
    conditional = script.main([*tiny[:-3], "--conditional", "--augment", "--out", str(tmp_path / "theta.pt"),
                               "--state", str(tmp_path / "theta_state.pt"), "--no-readme"])
    assert conditional["kwargs"]["context_shape"] == [2]
    theta = theta_context(torch.tensor([[0.6, 0.2], [1.0, 0.4]]))
    torch.testing.assert_close(theta, torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    assert load_pretrained(tmp_path / "theta.pt").conditional
