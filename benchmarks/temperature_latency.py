"""How long the temperature widget takes to redraw a 10x10 grid of samples at a new T, on this CPU.

    python benchmarks/temperature_latency.py               # 20 new temperatures per model
    python benchmarks/temperature_latency.py --repeats 10  # quicker
    python benchmarks/temperature_latency.py --threads 2   # torch threads during an update

Two Glow models (Kingma & Dhariwal, 2018) as :func:`flowlib.image_models.glow_image` builds
them: the digits-size one of lecture 5 (1x8x8, 2 levels of 4 steps, 32 hidden channels) and an
MNIST-size one (1x28x28 padded to 1x32x32 so that 3 levels of squeezes divide it; 8 steps per
level, 64 hidden channels). Their weights are random (ActNorm initialised on noise, the
zero-initialised convolutions perturbed): the cost of a redraw does not depend on training.

One update is what a student waits for after moving the slider to a temperature not seen
before: ``control.value = T`` runs the observer, which decodes x = f^{-1}(T * eps) for the 100
fixed noise images, tiles them, updates the image artist and renders the PNG. Printed per
model: the median and 90th percentile of the wall-clock time (ms), the median CPU time of this
process (on a machine shared with other jobs, closer to what an idle machine would show), the
share of the decode in it, and the time of a cached temperature (redraw only). Target: <= 200 ms
at MNIST size on the 2 cores (``--threads 2``; issue 18). Each model is timed three ways, side by
side: float32 as built, float32 in channels_last (the CPU's convolutions prefer it), and
bfloat16 autocast in channels_last (``TemperatureGrid(bfloat16=True)``: on a CPU with AMX or
AVX512-BF16 units; the pictures then differ from float32 by a few grey levels at most).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

os.environ.setdefault("MPLBACKEND", "Agg")

from flowlib.image_models import count_parameters, glow_image  # noqa: E402
from flowlib.widgets import TemperatureGrid  # noqa: E402

TARGET_MS = 200.0

MODELS = {
    "digits 1x8x8 (L=2, K=4, 32 ch)": dict(shape=(1, 8, 8), scales=2, depth=4, hidden=32, blocks=1,
                                           grey_levels=17),
    "MNIST 1x32x32 (L=3, K=8, 64 ch)": dict(shape=(1, 32, 32), scales=3, depth=8, hidden=64, blocks=1,
                                            grey_levels=256),
}


def random_glow(shape: tuple[int, int, int], **kwargs: int) -> torch.nn.Module:
    """A Glow with non-trivial random weights: ActNorm initialised on noise, zero layers perturbed."""
    torch.manual_seed(0)
    model = glow_image(shape, **kwargs)
    model.initialize(torch.randint(0, kwargs["grey_levels"], (64, *shape)).float())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "conditioner" in name or "priors" in name:
                p.add_(0.01 * torch.randn_like(p))
    return model.eval()


#: The ways of decoding timed side by side: (label, memory format, bfloat16 autocast).
VARIANTS = [("float32", torch.contiguous_format, False),
            ("float32, channels_last", torch.channels_last, False),
            ("bfloat16, channels_last", torch.channels_last, True)]


def time_model(name: str, spec: dict, repeats: int, threads: int, variant: tuple) -> None:
    spec = dict(spec)
    label, memory_format, bf16 = variant
    model = random_glow(spec.pop("shape"), **spec).to(memory_format=memory_format)
    if bf16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        print(f"{name:34s} {label:24s} | skipped: this CPU has no bfloat16 units (AVX512-BF16 / AMX)")
        return
    widget = TemperatureGrid(model, n=100, temperature=0.5, threads=threads, bfloat16=bf16)
    slider = widget.controls["temperature"]
    # New temperatures on the slider's 0.01 grid, never seen before, in a shuffled order.
    rng = np.random.default_rng(0)
    temps = rng.permutation(np.round(np.linspace(0.01, 1.0, 100), 2))[:repeats]
    temps = [float(t) for t in temps if abs(t - 0.5) > 1e-9]
    walls, cpus, decodes = [], [], []
    for t in temps:
        w0, c0 = time.perf_counter(), time.process_time()
        slider.value = t
        walls.append(1000 * (time.perf_counter() - w0))
        cpus.append(1000 * (time.process_time() - c0))
    torch.set_num_threads(threads)
    for t in temps[: max(3, repeats // 4)]:  # the decode alone, outside the widget
        d0 = time.perf_counter()
        widget.samples(t + 0.001)
        decodes.append(1000 * (time.perf_counter() - d0))
    cached = []
    for t in temps[:5]:  # back to temperatures already drawn: the redraw only
        w0 = time.perf_counter()
        slider.value = t
        cached.append(1000 * (time.perf_counter() - w0))
    wall = np.array(walls)
    verdict = "ok" if np.median(wall) < TARGET_MS else "SLOW"
    print(f"{name:34s} {label:24s} {count_parameters(model):>9,d} params | new T: median "
          f"{np.median(wall):7.1f} ms, "
          f"p90 {np.percentile(wall, 90):7.1f} ms, CPU {np.median(cpus):7.1f} ms (decode "
          f"{np.median(decodes):6.1f} ms) | cached T: {np.median(cached):5.1f} ms | {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="new temperatures timed per model")
    parser.add_argument("--threads", type=int, default=1, help="torch threads during an update")
    args = parser.parse_args()
    print(f"10x10 grid redraw at a new temperature, {args.threads} torch thread(s), "
          f"target < {TARGET_MS:.0f} ms; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for name, spec in MODELS.items():
        for variant in VARIANTS:
            time_model(name, spec, args.repeats, args.threads, variant)


if __name__ == "__main__":
    main()
