"""flowlib as a user gets it: ``python -m build``, then the wheel in a fresh virtual environment.

The sdist and the wheel are built by ``python -m build`` (the wheel from the sdist, as PyPI's
tools do, so an sdist that forgets a file fails here) from a copy of the package's sources, so
no stale ``build/`` folder of the clone can slip a deleted module in. ``--no-isolation`` uses
the setuptools pinned in requirements-dev.txt: the build needs no network.

The wheel is then installed, not editable, into a fresh virtual environment with its
dependencies resolved by pip from pyproject's ranges, constrained to requirements.txt's pins
(an open torch range would fetch the newest CUDA build). In that environment, with its working
directory outside the repository, a probe imports flowlib, trains a toy flow for a few steps with
``fit`` and loads every shipped checkpoint by its name, found by ``importlib.resources`` inside
the installed package; each forward pass must be finite.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.name for p in (ROOT / "flowlib" / "checkpoints").glob("*.pt"))
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

# Runs in the fresh environment: where flowlib came from, a short fit, every shipped model.
PROBE = """
import json, sys
import torch
import flowlib
from flowlib.data.toys import get_toy
from flowlib.pretrained import load_pretrained, shipped_checkpoints

report = {"flowlib": flowlib.__file__, "version": flowlib.__version__, "files": {}, "finite": {}}
torch.manual_seed(0)
model = flowlib.realnvp(2, couplings=4, hidden=16)
data = get_toy("eight_gaussians").sample(2048, generator=torch.Generator().manual_seed(0))
result = flowlib.fit(model, data, steps=30, batch_size=256, progress=False)
report["fit"] = {"steps": result.steps, "first": result.losses[0], "last": result.losses[-1]}
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


def _run(args: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    command = " ".join(map(str, args))
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel of today's sources, from ``python -m build --no-isolation``."""
    # build is part of the test install (requirements-dev.txt): a missing one fails, never skips.
    assert importlib.util.find_spec("build"), "build is missing (pip install -r requirements-dev.txt)"
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "flowlib", src / "flowlib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)])
    wheels, sdists = list(out.glob("flowlib-*.whl")), list(out.glob("flowlib-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


def test_build_names_the_version(dist: dict[str, Path]) -> None:
    assert dist["wheel"].name.startswith(f"flowlib-{VERSION}-py3-none-any"), dist["wheel"].name
    assert dist["sdist"].name == f"flowlib-{VERSION}.tar.gz"


def test_the_wheel_holds_the_package_and_its_checkpoints(dist: dict[str, Path]) -> None:
    names = zipfile.ZipFile(dist["wheel"]).namelist()
    assert SHIPPED, "no flowlib/checkpoints/*.pt to ship"
    for file in SHIPPED:
        assert f"flowlib/checkpoints/{file}" in names, f"{file} is not package data"
    assert "flowlib/checkpoints/README.md" in names
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "flowlib").rglob("*.py")}
    assert sources <= set(names), f"modules missing from the wheel: {sorted(sources - set(names))}"
    outside = ("tests/", "scripts/", "lectures/", "checkpoints/", "book/")
    assert not [n for n in names if n.startswith(outside)]


def test_the_metadata_says_what_flowlib_is(dist: dict[str, Path]) -> None:
    wheel = zipfile.ZipFile(dist["wheel"])
    meta = wheel.read(f"flowlib-{VERSION}.dist-info/METADATA").decode()
    assert f"Version: {VERSION}" in meta
    assert "License-Expression: MIT" in meta
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel.namelist()), "no LICENSE in the wheel"
    assert "Project-URL: Repository, https://github.com/" in meta
    assert "Classifier: Programming Language :: Python :: 3.11" in meta
    assert "Requires-Dist: torch" in meta


def test_the_sdist_holds_what_a_rebuild_needs(dist: dict[str, Path]) -> None:
    with tarfile.open(dist["sdist"]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    for needed in ("pyproject.toml", "README.md", "LICENSE", "flowlib/__init__.py",
                   *(f"flowlib/checkpoints/{f}" for f in SHIPPED)):
        assert needed in names, f"{needed} is not in the sdist"


def _pins_as_constraints(folder: Path) -> Path:
    """requirements.txt's pins without its ``-e .``: pip constraints for the fresh environment."""
    lines = [ln.split("#", 1)[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    path = folder / "constraints.txt"
    path.write_text("\n".join(ln for ln in lines if ln and not ln.startswith("-")) + "\n")
    return path


@pytest.mark.slow
def test_the_wheel_in_a_fresh_environment_trains_and_loads_every_checkpoint(dist: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--quiet", "--progress-bar", "off", "--constraint",
          str(_pins_as_constraints(tmp_path)), str(dist["wheel"])], timeout=900)
    away = tmp_path / "elsewhere"  # the working directory: neither the clone nor the install
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    done = _run([str(python), "-c", PROBE], cwd=away, env=env)
    report = json.loads(done.stdout.strip().splitlines()[-1])

    site = venv / "lib"
    assert Path(report["flowlib"]).resolve().is_relative_to(site.resolve()), report["flowlib"]
    assert report["version"] == VERSION
    assert report["fit"]["steps"] == 30 and report["fit"]["last"] < report["fit"]["first"], report["fit"]
    assert sorted(f"{name}.pt" for name in report["files"]) == SHIPPED
    for name, file in report["files"].items():
        assert Path(file).resolve().is_relative_to(site.resolve()), f"{name} came from {file}"
        assert report["finite"][name], f"{name}: a forward pass of the installed model is not finite"
