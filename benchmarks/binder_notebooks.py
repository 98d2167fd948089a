"""Execute every lecture the way Binder would, and print wall time and the kernel's peak memory.

Binder gives 2 CPU cores, 1-2 GB of memory and no GPU. This script runs each notebook in a
fresh kernel on the CPU (CUDA hidden, ``CI`` unset, so the notebooks take their normal CPU
sizes, not the short CI ones) and reads the kernel's peak resident memory (``VmHWM`` in
``/proc/<pid>/status``, Linux) just before the kernel shuts down. Target: under 1.5 GB each.

    python benchmarks/binder_notebooks.py                 # every lecture
    python benchmarks/binder_notebooks.py 01 02           # some of them
    python benchmarks/binder_notebooks.py --ci            # the short CI sizes instead
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MB = 1536


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM) in MiB; NaN where /proc is unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def run_notebook(path: Path, timeout: int) -> tuple[float, float]:
    """Execute one notebook in a fresh kernel; return (wall seconds, kernel peak RSS in MiB)."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    peak = float("nan")
    start = time.perf_counter()
    with client.setup_kernel():
        pid = client.km.provisioner.process.pid
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        wall = time.perf_counter() - start
        # Read the high-water mark while the kernel is still alive.
        peak = peak_rss_mb(pid)
    return wall, peak


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("lectures", nargs="*", help="lecture numbers or names (default: all)")
    parser.add_argument("--ci", action="store_true", help="run with CI=true (the short sizes)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell")
    args = parser.parse_args()

    # Binder: no GPU, 2 cores; the kernels inherit this environment.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.pop("MPLBACKEND", None)
    if args.ci:
        os.environ["CI"] = "true"
    else:
        os.environ.pop("CI", None)

    notebooks = sorted((ROOT / "lectures").glob("[0-9][0-9]_*.ipynb"))
    if args.lectures:
        notebooks = [nb for nb in notebooks if any(nb.stem.startswith(k) for k in args.lectures)]
    if not notebooks:
        print("no lecture matched", args.lectures, file=sys.stderr)
        return 2

    print(f"mode: {'CI (short)' if args.ci else 'Binder (CPU sizes)'}; cores: {os.cpu_count()}")
    print(f"| notebook | wall time (s) | kernel peak RSS (MiB) | under {LIMIT_MB} MiB |")
    print("| --- | ---: | ---: | --- |")
    ok = True
    for nb in notebooks:
        wall, peak = run_notebook(nb, args.timeout)
        under = peak < LIMIT_MB
        ok &= under
        print(f"| {nb.stem} | {wall:.0f} | {peak:.0f} | {'yes' if under else 'NO'} |", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
