"""flowlib as a user gets it: build the wheel, install it (not editable), load every shipped model.

The wheel is built from a copy of the package's sources (so no stale ``build/`` folder of the
clone can slip a deleted module in), installed with ``pip install --target`` into a temporary
folder, and imported in a fresh interpreter whose working directory is outside the repository
and whose ``PYTHONPATH`` is that folder (torch and the other dependencies come from the
running environment). There, every shipped checkpoint must be found by ``importlib.resources``
inside the installed package and load by its name, and a forward pass must be finite.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.name for p in (ROOT / "flowlib" / "checkpoints").glob("*.pt"))

# Runs in the installed copy: where flowlib came from, what it ships, and a forward pass of each.
PROBE = """
import json, sys
import torch
import flowlib
from flowlib.pretrained import load_pretrained, shipped_checkpoints

report = {"flowlib": flowlib.__file__, "files": {}, "finite": {}}
for name, file in shipped_checkpoints().items():
    report["files"][name] = str(file)
    model = load_pretrained(name)
    if not hasattr(model, "dequantizer"):  # a field flow (lecture 9): real-valued maps, in nats
        x = 0.02 * torch.randn(2, *model.event_shape, generator=torch.Generator().manual_seed(0))
        theta = torch.rand(2, *model.context_shape) * 2 - 1 if model.conditional else None
        with torch.no_grad():
            report["finite"][name] = bool(torch.isfinite(model.log_prob(x, context=theta)).all())
        continue
    x = torch.randint(0, 256, (2, *model.event_shape), generator=torch.Generator().manual_seed(0))
    # A conditional file needs its context: a class label, or an (observed image, mask) pair.
    raw = None if not model.conditional else (torch.zeros(2, dtype=torch.long) if model.context_shape == ()
                                              else torch.rand(2, *model.context_shape))
    with torch.no_grad():
        z, logdet = model.flow(model.dequantizer(x.float())[0], model._context(raw, 2, "probe"))
        report["finite"][name] = bool(torch.isfinite(z).all() and torch.isfinite(logdet).all()
                                      and torch.isfinite(model.log_prob(x, raw)).all())
print(json.dumps(report))
"""


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of today's sources, built without network or build isolation."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "flowlib", src / "flowlib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--quiet", "-w", str(out), str(src)])
    wheels = list(out.glob("flowlib-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_wheel_holds_the_checkpoints(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert SHIPPED, "no flowlib/checkpoints/*.pt to ship"
    for file in SHIPPED:
        assert f"flowlib/checkpoints/{file}" in names, f"{file} is not package data"
    assert "flowlib/checkpoints/README.md" in names
    assert "flowlib/pretrained.py" in names
    assert not [n for n in names if n.startswith(("tests/", "scripts/", "lectures/", "checkpoints/"))]


def test_installed_wheel_loads_every_shipped_model_by_name(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target",
          str(target), str(wheel)])
    away = tmp_path / "elsewhere"  # the working directory: neither the clone nor the install
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONPATH=str(target), PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1")
    done = _run([sys.executable, "-c", PROBE], cwd=away, env=env)
    report = json.loads(done.stdout.strip().splitlines()[-1])

    assert Path(report["flowlib"]).resolve().is_relative_to(target.resolve()), report["flowlib"]
    assert sorted(f"{name}.pt" for name in report["files"]) == SHIPPED
    for name, file in report["files"].items():
        assert Path(file).resolve().is_relative_to(target.resolve()), f"{name} came from {file}"
        assert report["finite"][name], f"{name}: a forward pass of the installed model is not finite"
