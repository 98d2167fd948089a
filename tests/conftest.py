"""Shared test set-up: a headless plotting backend, the shared data folder, seeds.

Everything runs in every test run (there is no ``--runslow``): a unit test takes seconds, and
the notebooks shorten their own training when the ``CI`` environment variable is set.

nbval executes each notebook in a separate Jupyter kernel, started by this process, so the
kernel inherits the environment set here (``FLOWLIB_DATA``, ``CI``), with one exception made on
purpose: ``MPLBACKEND`` (see :class:`_NotebookKernelsWithoutAgg`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from browser_support import browser, browser_tools  # noqa: F401 - the Chromium fixtures, for every test

# Plots in tests draw into memory, never into a window. Set before anything imports pyplot.
os.environ.setdefault("MPLBACKEND", "Agg")

#: The shared data folder beside the repository (../shared/data), holding mnist/ and
#: fashion-mnist/ with the original IDX .gz files. ``FLOWLIB_DATA`` overrides it.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if "FLOWLIB_DATA" not in os.environ and SHARED_DATA.is_dir():
    os.environ["FLOWLIB_DATA"] = str(SHARED_DATA)

# Under pytest-xdist each worker (and each notebook kernel it starts, which inherits the
# environment) gets one thread: with 2 workers on 2 cores, more threads only fight for the
# cores, and small tensors run many times slower when they do.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

SEED = 1234


@pytest.fixture
def data_dir() -> Path:
    """The folder with mnist/ and fashion-mnist/ (``FLOWLIB_DATA``); skips the test without one."""
    path = os.environ.get("FLOWLIB_DATA")
    if not path or not Path(path).is_dir():
        pytest.skip("no MNIST data folder: set FLOWLIB_DATA to a folder holding mnist/ and fashion-mnist/")
    return Path(path)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Every test starts from the same random state, whatever ran before it (also under xdist)."""
    random.seed(SEED)
    np.random.seed(SEED)  # noqa: NPY002 - the legacy global state is what unseeded code draws from
    torch.manual_seed(SEED)


class _NotebookKernelsWithoutAgg:
    """Start notebook kernels without ``MPLBACKEND``, as Jupyter does.

    nbval starts a notebook's kernel while setting up its first cell. ipykernel picks the
    inline backend only when ``MPLBACKEND`` is unset; with Agg inherited, figures would not
    be displayed and the outputs would no longer match the ones saved in the notebook.
    (Under pytest-xdist the workers inherit the variable from the controller process, so
    it is hidden whoever set it.)
    """

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Iterator[None]:
        saved = os.environ.pop("MPLBACKEND", None) if item.path.suffix == ".ipynb" else None
        try:
            yield
        finally:
            if saved is not None:
                os.environ["MPLBACKEND"] = saved


def pytest_configure(config: pytest.Config) -> None:
    # A hook in this conftest would only see the items under tests/; registered as a plugin,
    # it also sees the notebooks under lectures/ collected in the same run.
    config.pluginmanager.register(_NotebookKernelsWithoutAgg(), "flowlib-notebook-kernels")
