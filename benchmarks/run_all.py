"""Run every benchmark and write benchmarks/RESULTS.md: flowlib against zuko, nflows and normflows.

    python benchmarks/run_all.py --quick        # CPU, about 35 minutes (the digits' 300 s runs)
    python benchmarks/run_all.py --full         # GPU (CUDA): the long budgets, big batches
    python benchmarks/run_all.py --full --device cpu        # the long budgets on the CPU, 2 workers
    python benchmarks/run_all.py --quick --dry-run          # print the commands only
    python benchmarks/run_all.py --quick --only toys,throughput

Each benchmark runs in its own process, one at a time, with ``--threads`` torch threads (1 by
default: the machine may be shared), and prints markdown; this script collects the outputs, the
exact commands, the machine (CPU model, cores, GPU), the date and the versions of torch,
flowlib and the peers into one file. The peers (benchmarks/requirements-peers.txt) are optional:
a section whose library is missing says so.

Quick (CPU): 2D toys after 8 s of CPU time per system (the full mode: 30 s and 120 s), digits
after 60 s and 300 s (four systems, the two budgets in 2 workers), throughput at batch 32 / 64,
shorter sweeps of the widget, temperature and memory benchmarks, and the shipped MNIST flows'
test bits/dim on 2000 test images. The budgets are CPU time of the benchmark process (1 thread:
the time the work itself took; on a shared machine, wall-clock budgets would give fewer steps to
whichever system ran while the machine was busy). Full (GPU): wall-clock budgets, measured with
CUDA synchronisation, on an otherwise idle GPU. Full on the CPU (``--full --device cpu``): the
full budgets in CPU time, the toys' and the digits' independent runs in 2 worker processes
(``--jobs 2``: on 2 cores, each worker's CPU-time budget is as fair as in one process), no
torch.compile rows (measured and rejected on a CPU: benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import peers  # noqa: E402

SECTIONS = ("toys", "digits", "throughput", "widgets", "temperature", "memory", "mnist")
#: The digits systems of the run: flowlib's best (spline couplings), its default Glow, the
#: transformer flow and the peer (the Glow-conditioner row, 1-2 % behind the default at equal time in
#: every earlier run, is left to ``digits_vs_peers.py`` run by hand: it would add a quarter to the run).
DIGITS_SYSTEMS = ("flowlib Glow (spline coupling),flowlib Glow (ResNet conditioner),normflows Glow,"
                  "flowlib transformer flow")
#: The revision whose glow_mnist.pt the mnist section re-measures as "before" (the last file before
#: the retrained one: 1.640 bits/dim recorded).
MNIST_BEFORE = "5f67e16"

TITLES = {
    "toys": "2D toys: KL(data || model) at equal parameter counts",
    "digits": "8x8 digits: test bits/dim, flowlib's Glows vs normflows' Glow at equal parameters",
    "throughput": "Throughput: Glow at MNIST size (1x32x32, 3 levels x 8 steps, 64 hidden channels)",
    "widgets": "Widgets: update latency of each control (benchmarks/widget_latency.py)",
    "temperature": "Temperature grid: redraw latency (benchmarks/temperature_latency.py)",
    "memory": "Memory-saving backprop vs plain autograd (benchmarks/reversible_memory.py)",
    "mnist": "MNIST: test bits/dim of the shipped unconditional flows (benchmarks/mnist_models.py)",
}

NOTES = {
    "toys": (
        "Every system is trained by the same loop (Adam, warm-up + cosine over the budget, batch 512 "
        "doubled after 60 %, clipping at 5), side by side with the others (one step at a time, the system "
        "that has used the least of its budget next). Parameter counts are matched to flowlib's default "
        "RealNVP (`realnvp_vector(2)`: 12 affine couplings x 64 units) by choosing each system's hidden "
        "width; spline flows have 6 layers, affine ones 12. "
        "The peers see the data standardised by a fixed affine map (mean/std of 8192 samples), flowlib's "
        "models standardise with their first ActNorm."
    ),
    "digits": (
        "Two budgets, 60 s and 300 s of CPU time per system, each its own run in one of 2 worker processes. "
        "Same dequantisation and bits/dim convention for all (17 levels, uniform noise, logit with "
        "alpha = 0.05; a uniform model scores 4.087), same optimiser and schedule (digits_bpd.py's recipe), "
        "best-validation weights restored, trained side by side. The parameter counts are matched to "
        "190,752, the count of flowlib's digits Glow (hidden 32) when its couplings were masked, by "
        "choosing each system's hidden width."
    ),
    "throughput": (
        "Ratios are measured in the same process, the systems alternating step by step. Every flowlib row "
        "is `glow_image((1, 32, 32), scales=3, depth=8, hidden=64, blocks=1)` with the options its name "
        "gives; `(before)` marks what flowlib did before a change, and the `vs before` columns compare each "
        "changed row with the row it changes (torch's default AdamW -> fused "
        "AdamW, as `fit` now makes it; contiguous -> channels_last, as `fit(channels_last=True)`). See "
        "benchmarks/README.md, 'Speed work'."
    ),
}


def commands(mode: str, threads: int, device: str) -> dict[str, list[str]]:
    py = [sys.executable]
    t = ["--threads", str(threads)]
    if mode == "quick":
        return {
            "toys": py + ["benchmarks/toys_vs_peers.py", "--budgets", "8", "--kl-samples", "100000",
                          "--clock", "cpu", *t],
            "digits": py + ["benchmarks/digits_vs_peers.py", "--budgets", "60,300", "--iw-samples", "16",
                            "--clock", "cpu", "--jobs", "2", "--systems", DIGITS_SYSTEMS, *t],
            "throughput": py + ["benchmarks/throughput.py", "--channels-last", "--rounds", "6",
                                "--train-batch", "32", "--sample-batch", "64", "--vector", "--profile", *t],
            "widgets": py + ["benchmarks/widget_latency.py", "--steps", "6"],
            # The redraw target is set on the 2 cores of the course's machines: 2 threads.
            "temperature": py + ["benchmarks/temperature_latency.py", "--repeats", "6", "--threads", "2"],
            "memory": py + ["benchmarks/reversible_memory.py", "--device", "cpu", "--steps", "9", *t],
            "mnist": py + ["benchmarks/mnist_models.py", "--images", "2000", "--before", MNIST_BEFORE, *t],
        }
    d = ["--device", device]
    cpu = device == "cpu"
    # On the CPU: CPU-time budgets, and the independent runs in 2 worker processes (one per core of
    # the course's machines); on a GPU: wall-clock budgets, one process (workers would share the GPU).
    clock = ["--clock", "cpu", "--jobs", "2"] if cpu else ["--clock", "wall"]
    return {
        "toys": py + ["benchmarks/toys_vs_peers.py", "--budgets", "30,120", *clock, *d, *t],
        "digits": py + ["benchmarks/digits_vs_peers.py", "--budgets", "60,300", *clock, *d, *t],
        "throughput": py + ["benchmarks/throughput.py", "--channels-last", *([] if cpu else ["--compile"]),
                            "--vector", "--rounds", "10",
                            "--train-batch", "256" if device != "cpu" else "32",
                            "--sample-batch", "1024" if device != "cpu" else "64", *d, *t],
        "widgets": py + ["benchmarks/widget_latency.py"],
        "temperature": py + ["benchmarks/temperature_latency.py", *t],
        "memory": py + ["benchmarks/reversible_memory.py", *d,
                        *(["--batch", "65536"] if device != "cpu" else []), *t],
        "mnist": py + ["benchmarks/mnist_models.py", "--images", "10000", "--before", MNIST_BEFORE, *t],
    }


def machine(device: str) -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "none"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - the report must be written whatever the GPU stack says
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "gpu": gpu, "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}"}


def run_section(cmd: list[str], env: dict[str, str]) -> tuple[int, str, str, float, float]:
    """Run one benchmark: (exit code, stdout, stderr tail, wall s, CPU s of the child)."""
    w0 = time.perf_counter()
    c0 = os.times()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    c1 = os.times()
    cpu = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
    tail = "\n".join(line for line in proc.stderr.splitlines()[-15:] if "Warning" not in line)
    return proc.returncode, proc.stdout, tail, time.perf_counter() - w0, cpu


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CPU, short budgets (the default)")
    mode.add_argument("--full", action="store_true", help="GPU, the long budgets")
    p.add_argument("--device", default=None, help="default: cpu for --quick, cuda for --full")
    p.add_argument("--threads", type=int, default=1, help="torch threads per benchmark")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated, from {', '.join(SECTIONS)}")
    p.add_argument("--out", default=str(HERE / "RESULTS.md"))
    p.add_argument("--dry-run", action="store_true", help="print the commands and stop")
    args = p.parse_args(argv)
    mode_name = "full" if args.full else "quick"
    if not args.full and args.device not in (None, "cpu"):
        raise SystemExit("--quick runs on the CPU; use --full --device DEVICE for another device")
    device = args.device or ("cuda" if args.full else "cpu")
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; choose from {SECTIONS}")
    cmds = {k: v for k, v in commands(mode_name, args.threads, device).items() if k in only}
    if args.dry_run:
        for k, cmd in cmds.items():
            print(f"{k}: {shlex.join(_shown(cmd))}")
        return
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--full runs on a GPU and none is visible here; use --quick, or --full --device "
                             "cpu for the long budgets on the CPU (hours)")

    env = dict(os.environ, MPLBACKEND="Agg", PYTHONWARNINGS="ignore")
    shared = ROOT.parent / "shared" / "data"
    if "FLOWLIB_DATA" not in env and shared.is_dir():
        env["FLOWLIB_DATA"] = str(shared)  # the MNIST files beside the repository, if any
    started = dt.datetime.now().astimezone()
    load0 = os.getloadavg()[0]
    outputs = {}
    for k, cmd in cmds.items():
        print(f"[run_all] {k}: {shlex.join(_shown(cmd))}", flush=True)
        outputs[k] = run_section(cmd, env)
        rc, _, tail, wall, cpu = outputs[k]
        print(f"[run_all] {k}: exit {rc}, {wall:.0f} s wall, {cpu:.0f} s CPU", flush=True)
        if rc != 0:
            print(tail, flush=True)
    invocation = f"--{mode_name}" + (f" --device {device}" if args.full and device != "cuda" else "")
    if set(only) != set(SECTIONS):
        invocation += f" --only {','.join(only)}"
    write_results(Path(args.out), mode_name, invocation, device, args.threads, started, load0, cmds, outputs)
    print(f"[run_all] wrote {args.out}")


def _shown(cmd: list[str]) -> list[str]:
    """The command as a user types it in the repository root (python, relative paths)."""
    return ["python", *cmd[1:]]


def _flag(cmd: list[str], name: str, default: str = "") -> str:
    """The value of option ``name`` in a benchmark command, or ``default``."""
    return cmd[cmd.index(name) + 1] if name in cmd[:-1] else default


def _budgets(cmds: dict[str, list[str]], k: str) -> str:
    return " s and ".join(_flag(cmds[k], "--budgets").split(",")) + " s" if k in cmds else ""


def clocks_text(mode: str, device: str, threads: int, cmds: dict[str, list[str]]) -> str:
    """What the sections' budgets and timings measured, for the mode that actually ran."""
    if mode == "quick":
        return (
            "Training budgets and throughput are in CPU time of the benchmark process "
            f"(`time.process_time`, {threads} torch thread(s)), not wall time: on a shared machine the "
            "wall clock counts other jobs' work too. Systems that are compared are run side by side in "
            "the same process, alternating step by step, so that whatever load there is falls on all of "
            "them alike; the ratios are the figures to trust, the absolute rates depend on the load. The "
            "widget benchmarks report wall time (what a student waits) and CPU time. Budgets are shorter "
            "than the full mode's on the toys: 8 s per system (full: 30 s and 120 s); the digits have the "
            "full mode's 60 s and 300 s, for four of its systems. No GPU was used."
        )
    if device == "cpu":
        parts = ["The full mode ran on the CPU, not on a GPU: no GPU was used for any section."]
        ran = [f"{_budgets(cmds, k)} per system on the {k}" for k in ("toys", "digits") if k in cmds]
        if ran:
            parts.append("The full training budgets, " + " and ".join(ran) + ", are CPU time of the "
                         f"process that trains the systems (`time.process_time`, {threads} torch thread(s) "
                         "per process), not wall time.")
        jobs = {k: _flag(cmds[k], "--jobs", "1") for k in ("toys", "digits") if k in cmds}
        if any(j != "1" for j in jobs.values()):
            parts.append(
                "The independent runs (one per toy and budget on the toys, one per budget on the digits) "
                "went to " + " and ".join(f"{j} worker processes for the {k}" for k, j in jobs.items())
                + " (`--jobs`), running at the same time; since each budget is CPU time of "
                "its own worker, the budgets are the same as in one process. The systems compared within "
                "one run are still trained side by side in one process, one step at a time.")
        parts.append("Throughput is CPU time of one process with the systems alternating step by step "
                     "(no torch.compile rows on a CPU); the widget benchmarks report wall time and CPU time.")
        return " ".join(parts)
    return (f"Wall-clock budgets on {device}, with CUDA synchronisation after each step (an idle GPU is "
            "assumed); one process per benchmark.")


def write_results(path: Path, mode: str, invocation: str, device: str, threads: int, started: dt.datetime,
                  load0: float, cmds: dict[str, list[str]], outputs: dict) -> None:
    m = machine(device)
    v = peers.versions()
    total_wall = sum(o[3] for o in outputs.values())
    total_cpu = sum(o[4] for o in outputs.values())
    if mode == "quick":
        gpu = (f"- GPU: {m['gpu']}; not used: the `--full` mode (30 s / 120 s toys, big batches) and "
               "`benchmarks/gpu_check.sh` (the CUDA tests, AMP and torch.compile throughput, 5 minutes of "
               "MNIST Glow) were NOT run for this file")
    elif device == "cpu":
        gpu = (f"- GPU: {m['gpu']}; not used: `--full --device cpu` ran the full budgets on the CPU, "
               "no GPU run is reported in this file")
    else:
        gpu = f"- GPU: {m['gpu']}; the training benchmarks ran on {device}"
    lines = [
        "# Benchmarks: flowlib against zuko, nflows and normflows",
        "",
        f"Written by `python benchmarks/run_all.py {invocation}` on {started:%Y-%m-%d %H:%M %Z}; the "
        f"sections took {total_wall / 60:.1f} min of wall time and {total_cpu / 60:.1f} min of CPU time (all "
        "processes). Re-run it to update this file (do not edit it by hand); what the benchmarks measure "
        "and why is in benchmarks/README.md.",
        "",
        "## Machine and versions",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; {threads} torch thread(s) per benchmark process; load "
        f"average {load0:.1f} at the start and {os.getloadavg()[0]:.1f} at the end (the machine may be "
        "shared with other jobs)",
        gpu,
        f"- {m['os']}, Python {m['python']}; " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- device for the training benchmarks: {device}",
        "",
        "## Clocks",
        "",
        clocks_text(mode, device, threads, cmds),
        "",
    ]
    for k, cmd in cmds.items():
        rc, out, tail, wall, cpu = outputs[k]
        shown = shlex.join(_shown(cmd))
        lines += [f"## {TITLES[k]}", "", f"`{shown}` ({wall:.0f} s wall, {cpu:.0f} s CPU)", ""]
        if k in NOTES:
            lines += [NOTES[k], ""]
        if rc != 0:
            lines += [f"**Failed** (exit {rc}):", "", "```", tail, "```", ""]
            continue
        body = out.strip()
        if k in ("widgets", "temperature", "memory"):  # plain-text tables (the others print markdown)
            body = "```\n" + body + "\n```"
        lines += [body, ""]
    path.write_text("\n".join(lines).rstrip() + "\n")


if __name__ == "__main__":
    main()
