"""The install files agree with each other, and the notebooks are paired, in sync and executed.

- requirements.txt pins the course's direct dependencies exactly (torch to 2.13.0) and installs
  flowlib; requirements-dev.txt adds the tools (tests, browser, website, build, nbgrader) on top
  of it; environment.yml (conda) and binder/ carry the course's packages at the same versions.
- README.md opens with the two commands, and .ci/run runs README's test command.
- the shipped checkpoints are package data (flowlib/checkpoints/, pyproject's package-data);
- every lectures/*.ipynb has a py:percent twin with the same cells (jupytext), and is committed
  with its outputs, without errors, and with valid nbval tags.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from importlib.metadata import version
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "lectures").glob("*.ipynb"))
TWINS = sorted((ROOT / "lectures").glob("*.py"))
START_NOTEBOOK = "lectures/00_generative_models.ipynb"
NBVAL_TAGS = {"nbval-ignore-output", "nbval-check-output", "nbval-raises-exception", "nbval-skip",
              "raises-exception"}


def read_pins(path: Path) -> dict[str, str]:
    """{canonical name: exact version} from a pip requirements file; other lines are skipped."""
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"{path.name}: '{line}' is not pinned with =="
        pins[canonicalize_name(req.name)] = spec[0].version
    return pins


def public(v: str) -> str:
    """The version without a local label: 2.13.0+cpu -> 2.13.0."""
    return Version(v).public


REQUIREMENTS = read_pins(ROOT / "requirements.txt")
DEV_REQUIREMENTS = read_pins(ROOT / "requirements-dev.txt")


# -- requirements.txt ------------------------------------------------------------------------------
def test_requirements_install_flowlib_and_pin_torch():
    lines = [ln.split("#", 1)[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    assert "-e ." in lines, "requirements.txt must install flowlib itself (-e .)"
    # An open range would let pip fetch the newest torch with GBs of CUDA packages.
    assert REQUIREMENTS["torch"] == "2.13.0"
    course = {"torch", "numpy", "scipy", "matplotlib", "scikit-learn", "tqdm", "ipywidgets",
              "jupyterlab", "ipykernel", "jupytext", "nbformat", "nbclient"}
    assert course == set(REQUIREMENTS), f"requirements.txt vs the course: {set(REQUIREMENTS) ^ course}"


def test_dev_requirements_add_the_tools_to_the_course():
    lines = [ln.split("#", 1)[0].strip() for ln in (ROOT / "requirements-dev.txt").read_text().splitlines()]
    assert "-r requirements.txt" in lines, "requirements-dev.txt must install the course first"
    tools = {"pytest", "pytest-xdist", "hypothesis", "nbval", "ruff", "pyyaml", "playwright", "nbgrader",
             "sphinx", "myst-nb", "furo", "sphinx-mathjax-offline", "build", "setuptools"}
    missing = tools - set(DEV_REQUIREMENTS)
    assert not missing, f"missing from requirements-dev.txt: {missing}"
    assert not set(DEV_REQUIREMENTS) & set(REQUIREMENTS), "a package is pinned in both requirements files"


def test_pyproject_dependencies_are_pinned_in_requirements():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in REQUIREMENTS, f"flowlib needs {name}, requirements.txt does not pin it"
        assert req.specifier.contains(REQUIREMENTS[name]), f"pyproject's {dep} excludes the pin"


@pytest.mark.parametrize("name", sorted({**REQUIREMENTS, **DEV_REQUIREMENTS}))
def test_installed_versions_match_the_pins(name):
    """The environment running the tests is the one the two requirements files describe."""
    assert public(version(name)) == {**REQUIREMENTS, **DEV_REQUIREMENTS}[name]


# -- environment.yml and binder/ ------------------------------------------------------------------
def test_environment_yml_matches_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda, pip_lines = {}, []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip_lines += dep["pip"]
            continue
        name, _, ver = dep.partition("=")
        conda[canonicalize_name(name)] = ver
    assert conda.pop("python") == "3.11"
    assert conda.pop("pip") == ""
    assert "-e ." in pip_lines, "environment.yml must install flowlib itself (-e . in the pip section)"
    pip = {canonicalize_name(Requirement(ln).name): str(Requirement(ln).specifier).removeprefix("==")
           for ln in pip_lines if not ln.startswith("-")}
    assert not set(conda) & set(pip), "a package is listed both for conda and pip"
    assert {**conda, **pip} == REQUIREMENTS


def test_binder_matches_requirements():
    binder = read_pins(ROOT / "binder" / "requirements.txt")
    assert {name: public(v) for name, v in binder.items()} == REQUIREMENTS
    # The CPU build of the same torch, from the PyTorch CPU index: Binder has no GPU.
    assert binder["torch"] == REQUIREMENTS["torch"] + "+cpu"
    assert "download.pytorch.org/whl/cpu" in (ROOT / "binder" / "requirements.txt").read_text()
    assert (ROOT / "binder" / "runtime.txt").read_text().strip() == "python-3.11"


def test_binder_post_build_installs_flowlib_and_pairing():
    post_build = ROOT / "binder" / "postBuild"
    assert post_build.stat().st_mode & 0o111, "binder/postBuild must be executable"
    text = post_build.read_text()
    assert text.startswith("#!") and "pip install --no-deps -e ." in text
    assert "jupyterlab_jupytext" in text


def test_readme_binder_badge_opens_the_first_lecture():
    readme = (ROOT / "README.md").read_text()
    urls = re.findall(r"https://mybinder\.org/v2/gh/[^\s)`]+", readme)
    assert urls, "README.md has no Binder link"
    for url in urls:
        assert url.endswith(f"?urlpath=lab/tree/{START_NOTEBOOK}"), url
    assert (ROOT / START_NOTEBOOK).is_file()


# -- package data ----------------------------------------------------------------------------------
#: The one other place a committed .pt may live: lecture 4's toy models, which belong to the
#: lecture (not to the package: no flowlib code loads them), each listed with its SHA-256 in the
#: folder's MANIFEST.json and written by scripts/train_toy_flows.py.
LECTURE_MODELS = Path("lectures") / "toy_flows"


def test_shipped_checkpoints_are_package_data():
    """Every committed .pt is a shipped checkpoint inside the package, and installs with it, or
    one of lecture 4's toy models, listed with its checksum in their manifest.

    ``tests/test_wheel.py`` builds and installs the wheel; this is the quick static half.
    """
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "*.pt"], capture_output=True, text=True)
    pt = [Path(p) for p in tracked.stdout.split()] if tracked.returncode == 0 else []
    folder = Path("flowlib") / "checkpoints"
    elsewhere = [p for p in pt if p.parent not in (folder, LECTURE_MODELS)]
    assert not elsewhere, f"checkpoints outside {folder}/ and {LECTURE_MODELS}/: {elsewhere}"
    lecture_models = [p for p in pt if p.parent == LECTURE_MODELS]
    if lecture_models:
        manifest = json.loads((ROOT / LECTURE_MODELS / "MANIFEST.json").read_text())
        listed = {entry["file"]: entry["file_sha256"] for entry in manifest["files"].values()}
        for p in lecture_models:
            assert p.name in listed, f"{p} is not in {LECTURE_MODELS}/MANIFEST.json"
            assert hashlib.sha256((ROOT / p).read_bytes()).hexdigest() == listed[p.name], f"{p}: checksum"
    assert not (ROOT / "checkpoints").exists(), "the old checkpoints/ folder is back"
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data["flowlib"]
    shipped = sorted((ROOT / folder).glob("*.pt"))
    assert shipped
    for file in [*shipped, ROOT / folder / "README.md"]:
        inside = file.relative_to(ROOT / "flowlib")
        assert any(inside.match(pattern) for pattern in patterns), f"{inside} is not in package-data"


# -- README and CI ---------------------------------------------------------------------------------
def readme_commands() -> list[str]:
    """The shell commands of the fenced blocks that open README.md (before the first heading '## ')."""
    head = (ROOT / "README.md").read_text().split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", head, flags=re.S)
    return [ln for block in blocks for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]


def test_readme_opens_with_two_commands():
    setup = "python3 -m venv .venv && .venv/bin/pip install --no-compile -r requirements.txt && "
    commands = readme_commands()
    assert len(commands) == 2, commands
    lab, tests = commands
    assert lab == setup + f".venv/bin/jupyter lab {START_NOTEBOOK}"
    dev = "python3 -m venv .venv && .venv/bin/pip install --no-compile -r requirements-dev.txt && "
    assert tests.startswith(dev + ".venv/bin/python -m pytest ")
    for flag in ("--nbval", "--nbval-current-env", "tests", "lectures"):
        assert flag in tests.split(), f"the test command lacks {flag}"
    assert not re.search(r"/(home|root|work|tmp)/", (ROOT / "README.md").read_text()), "a machine path"


def test_ci_runs_the_readme_test_command():
    out = subprocess.run(["bash", str(ROOT / ".ci" / "run"), "--print-test-command"],
                         capture_output=True, text=True, check=True).stdout.strip()
    tests = readme_commands()[1]
    assert tests.endswith(".venv/bin/python -m pytest " + out)


# -- notebooks -------------------------------------------------------------------------------------
def cells(nb) -> list[tuple[str, str, list[str]]]:
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


def test_there_are_lectures():
    assert NOTEBOOKS and (ROOT / START_NOTEBOOK) in NOTEBOOKS


@pytest.mark.parametrize("py", TWINS, ids=lambda p: p.name)
def test_every_twin_has_a_notebook(py):
    assert py.with_suffix(".ipynb").is_file(), f"{py.name} has no .ipynb: run jupytext --sync {py.name}"


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_and_twin_are_in_sync(ipynb):
    py = ipynb.with_suffix(".py")
    assert py.is_file(), f"{ipynb.name} has no py:percent twin: run jupytext --sync {ipynb.name}"
    assert "format_name: percent" in py.read_text()
    nb_cells, py_cells = cells(jupytext.read(ipynb)), cells(jupytext.read(py))
    assert nb_cells == py_cells, f"{ipynb.name} and {py.name} differ: run jupytext --sync lectures/*.ipynb"


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_with_outputs(ipynb):
    nb = nbformat.read(ipynb, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any(c.outputs for c in code), f"{ipynb.name} has no outputs: execute it before committing"
    for i, c in enumerate(code):
        tags = set(c.metadata.get("tags", []))
        assert tags & {"raises-exception", "nbval-raises-exception"} or not any(
            o.output_type == "error" for o in c.outputs), f"{ipynb.name}: code cell {i} saved an error"
        unknown = {t for t in tags if t.startswith("nbval") or t == "raises-exception"} - NBVAL_TAGS
        assert not unknown, f"{ipynb.name}: code cell {i} has unknown nbval tags {unknown}"
