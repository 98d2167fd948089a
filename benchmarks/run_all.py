"""Run every benchmark and write benchmarks/RESULTS.md: flowlib against zuko, nflows and normflows.

    python benchmarks/run_all.py --quick        # CPU, about 15 minutes of CPU time
    python benchmarks/run_all.py --full         # GPU (CUDA): the long budgets, big batches
    python benchmarks/run_all.py --quick --dry-run          # print the commands only
    python benchmarks/run_all.py --quick --only toys,throughput

Each benchmark runs in its own process, one at a time, with ``--threads`` torch threads (1 by
default: the machine may be shared), and prints markdown; this script collects the outputs, the
exact commands, the machine (CPU model, cores, GPU), the date and the versions of torch,
flowlib and the peers into one file. The peers (benchmarks/requirements-peers.txt) are optional:
a section whose library is missing says so.

Quick (CPU): 2D toys after 8 s of CPU time per system (the full mode: 30 s and 120 s), digits
after 60 s (full: 60 s and 300 s), throughput at batch 32 / 64, and shorter sweeps of the widget,
temperature and memory benchmarks. The budgets are CPU time of the benchmark process (1 thread:
the time the work itself took; on a shared machine, wall-clock budgets would give fewer steps to
whichever system ran while the machine was busy). Full (GPU): wall-clock budgets, measured with
CUDA synchronisation, on an otherwise idle GPU.
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

SECTIONS = ("toys", "digits", "throughput", "widgets", "temperature", "memory")

TITLES = {
    "toys": "2D toys: KL(data || model) at equal parameter counts",
    "digits": "8x8 digits: test bits/dim, flowlib Glow vs normflows Glow at equal parameters",
    "throughput": "Throughput: Glow at MNIST size (1x32x32, 3 levels x 8 steps, 64 hidden channels)",
    "widgets": "Widgets: update latency of each control (benchmarks/widget_latency.py)",
    "temperature": "Temperature grid: redraw latency (benchmarks/temperature_latency.py)",
    "memory": "Memory-saving backprop vs plain autograd (benchmarks/reversible_memory.py)",
}

NOTES = {
    "toys": (
        "Every system is trained by the same loop (Adam, warm-up + cosine over the budget, batch 512 "
        "doubled after 60 %, clipping at 5), side by side with the others (one step at a time, the system "
        "that has used the least of its budget next). Parameter counts are matched to flowlib's default "
        "RealNVP (12 couplings x 64 units) by choosing each system's hidden width; spline flows have 6 "
        "layers, affine ones 12. The peers see the data standardised by a fixed affine map (mean/std of "
        "8192 samples), flowlib's models standardise with their first ActNorm."
    ),
    "digits": (
        "Same dequantisation and bits/dim convention for all (17 levels, uniform noise, logit with "
        "alpha = 0.05; a uniform model scores 4.087), same optimiser and schedule (digits_bpd.py's recipe), "
        "best-validation weights restored, trained side by side."
    ),
    "throughput": (
        "Ratios are measured in the same process, the systems alternating step by step. "
        "`flowlib, Glow conditioner` has normflows' conditioner but flowlib's masked coupling; the "
        "PROTOTYPE rows are proposals for flowlib measured in benchmarks/throughput.py (see "
        "benchmarks/README.md, 'Speed work')."
    ),
}


def commands(mode: str, threads: int, device: str) -> dict[str, list[str]]:
    py = [sys.executable]
    t = ["--threads", str(threads)]
    if mode == "quick":
        return {
            "toys": py + ["benchmarks/toys_vs_peers.py", "--budgets", "8", "--kl-samples", "100000",
                          "--clock", "cpu", *t],
            "digits": py + ["benchmarks/digits_vs_peers.py", "--budgets", "60", "--iw-samples", "16",
                            "--clock", "cpu", *t],
            "throughput": py + ["benchmarks/throughput.py", "--channels-last", "--rounds", "5", "--vector",
                                "--profile", *t],
            "widgets": py + ["benchmarks/widget_latency.py", "--steps", "6"],
            "temperature": py + ["benchmarks/temperature_latency.py", "--repeats", "6", *t],
            "memory": py + ["benchmarks/reversible_memory.py", "--batch", "2048", "--steps", "3", *t],
        }
    d = ["--device", device]
    wall = ["--clock", "wall"] if device != "cpu" else ["--clock", "cpu"]
    return {
        "toys": py + ["benchmarks/toys_vs_peers.py", "--budgets", "30,120", *wall, *d, *t],
        "digits": py + ["benchmarks/digits_vs_peers.py", "--budgets", "60,300", *wall, *d, *t],
        "throughput": py + ["benchmarks/throughput.py", "--channels-last", "--compile", "--vector",
                            "--rounds", "10",
                            "--train-batch", "256" if device != "cpu" else "32",
                            "--sample-batch", "1024" if device != "cpu" else "64", *d, *t],
        "widgets": py + ["benchmarks/widget_latency.py"],
        "temperature": py + ["benchmarks/temperature_latency.py", *t],
        "memory": py + ["benchmarks/reversible_memory.py", *d,
                        *(["--batch", "65536"] if device != "cpu" else []), *t],
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
    write_results(Path(args.out), mode_name, device, args.threads, started, load0, cmds, outputs)
    print(f"[run_all] wrote {args.out}")


def _shown(cmd: list[str]) -> list[str]:
    """The command as a user types it in the repository root (python, relative paths)."""
    return ["python", *cmd[1:]]


def write_results(path: Path, mode: str, device: str, threads: int, started: dt.datetime, load0: float,
                  cmds: dict[str, list[str]], outputs: dict) -> None:
    m = machine(device)
    v = peers.versions()
    total_wall = sum(o[3] for o in outputs.values())
    total_cpu = sum(o[4] for o in outputs.values())
    lines = [
        "# Benchmarks: flowlib against zuko, nflows and normflows",
        "",
        f"Written by `python benchmarks/run_all.py --{mode}` on {started:%Y-%m-%d %H:%M %Z}; the sections "
        f"took {total_wall / 60:.1f} min of wall time and {total_cpu / 60:.1f} min of CPU time. Re-run it to "
        "update this file (do not edit it by hand); what the benchmarks measure and why is in "
        "benchmarks/README.md.",
        "",
        "## Machine and versions",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; {threads} torch thread(s) per benchmark; load average "
        f"{load0:.1f} at the start and {os.getloadavg()[0]:.1f} at the end (the machine is shared: other "
        "jobs were running)",
        f"- GPU: {m['gpu']}" + ("" if mode == "full" else "; the `--full` mode (GPU, 30 s / 120 s toys, "
                                  "60 s / 300 s digits, big batches) was NOT run for this file"),
        f"- {m['os']}, Python {m['python']}; " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- device for the training benchmarks: {device}",
        "",
        "## Clocks",
        "",
    ]
    if mode == "quick":
        lines += [
            "Training budgets and throughput are in CPU time of the benchmark process (`time.process_time`, "
            "1 torch thread), not wall time: on this shared 2-core machine the wall clock counts other jobs' "
            "work too. Systems that are compared are run side by side in the same process, alternating step "
            "by step, so that whatever load there is falls on all of them alike; the ratios are the figures "
            "to trust, the absolute rates depend on the load. The widget benchmarks report wall time (what a "
            "student waits) and CPU time. Budgets are shorter than the full mode's: 8 s per system on the "
            "toys (full: 30 s and 120 s), 60 s on the digits (full: 60 s and 300 s).",
            "",
        ]
    else:
        lines += ["Wall-clock budgets, with CUDA synchronisation after each step (an idle GPU is assumed).",
                  ""]
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
        if k in ("widgets", "temperature", "memory"):  # plain-text tables of the existing scripts
            body = "```\n" + body + "\n```"
        lines += [body, ""]
    path.write_text("\n".join(lines).rstrip() + "\n")


if __name__ == "__main__":
    main()
