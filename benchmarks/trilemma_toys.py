"""The generative learning trilemma on a 2D toy: every family trained for the same budget, measured alike.

    python benchmarks/trilemma_toys.py                       # eight Gaussians, 60 s per system
    python benchmarks/trilemma_toys.py --seconds 10 --toy two_moons

Systems: flowlib's NSF and RealNVP (exact likelihood), flow matching (a continuous flow; exact
likelihood through the ODE), a VAE (a bound: ELBO and IWAE with 1000 samples), a GAN with the
non-saturating loss and a WGAN-GP (no likelihood at all). Each trains for ``--seconds`` of
wall-clock time on one thread, one after the other (run it on an otherwise idle machine), with
Adam at the learning rate of its family. Then, for every system alike:

- **likelihood**: the mean test log-likelihood on 5000 fresh samples (nats), and the KL to the
  data, E[log p_data - log p_model], from the toy's exact log-density (the VAE's bound gives an
  upper bound on its KL);
- **sample quality**: the energy distance of 5000 samples to 5000 fresh data samples
  (flowlib.metrics.energy_distance, needs only samples);
- **mode coverage** (eight Gaussians): how many modes hold at least 5% of 10000 samples;
- **sampling time** for 10000 samples, and the training steps the budget bought.

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch

from flowlib.data.toys import get_toy
from flowlib.families import GAN, VAE, FlowMatching, fit_gan
from flowlib.metrics import energy_distance, modes_covered
from flowlib.models import nsf, realnvp_vector
from flowlib.train import fit


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--toy", default="eight_gaussians")
    p.add_argument("--seconds", type=float, default=60.0, help="training budget per system (wall clock)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    toy = get_toy(args.toy)
    g = torch.Generator().manual_seed(args.seed)
    train, test, reference = (toy.sample(n, generator=g) for n in (50_000, 5000, 5000))
    data_ll = float(toy.log_prob(test).mean())

    torch.manual_seed(args.seed)
    systems = {"flowlib NSF": nsf(2), "flowlib RealNVP": realnvp_vector(2),
               "flow matching": FlowMatching(2, hidden=64, layers=3),
               "VAE (latent 2)": VAE(2, 2, hidden=64, likelihood="gaussian"),
               "GAN (non-saturating)": GAN(2, latent_dim=2, hidden=64),
               "WGAN-GP": GAN(2, latent_dim=2, hidden=64, loss="wgan-gp")}
    rows = []
    for name, model in systems.items():
        torch.manual_seed(args.seed)
        if isinstance(model, GAN):
            history, spent = _timed(lambda m=model: fit_gan(m, train, steps=10**9, seconds=args.seconds,
                                                            seed=args.seed, progress=False))
            steps = len(history["generator"])
        else:
            loss_fn = (lambda m, x: m.loss(x)) if isinstance(model, FlowMatching) else None
            lr = 2e-3 if loss_fn else 3e-3
            result, spent = _timed(lambda m=model, f=loss_fn, lr=lr: fit(
                m, train, seconds=args.seconds, batch_size=512, lr=lr, seed=args.seed, loss_fn=f,
                progress=False))
            steps = result.steps
        model.eval()
        if isinstance(model, VAE):  # a VAE's sample is x ~ p(x | z), not only the decoder's mean
            def draw(m=model):
                return m.sample(10_000, mean=False)
        else:
            def draw(m=model):
                return m.sample(10_000)
        samples, sample_seconds = _timed(draw)
        samples = samples.detach().float()
        with torch.no_grad():
            if isinstance(model, GAN):
                ll, kind = None, "none"
            elif isinstance(model, VAE):
                ll, kind = float(model.iwae(test, k=1000).mean()), "IWAE-1000 bound"
                elbo = float(model.elbo(test, k=10).mean())
                kind += f" (ELBO {elbo:.3f})"
            else:
                ll, kind = None, "exact"
        if isinstance(model, FlowMatching):
            ll = float(torch.cat([model.log_prob(part, steps=20) for part in test.split(1000)]).mean())
        elif kind == "exact":
            with torch.no_grad():
                ll = float(model.log_prob(test).mean())
        rows.append({"system": name, "steps": steps, "train s": spent, "ll": ll, "kind": kind,
                     "kl": None if ll is None else data_ll - ll,
                     "energy": energy_distance(samples[:5000], reference),
                     "modes": modes_covered(samples, toy.centres) if args.toy == "eight_gaussians" else None,
                     "sample s": sample_seconds})

    print(f"\n{args.toy}, {args.seconds:g} s of training per system, {args.threads} thread(s); "
          f"data log-likelihood {data_ll:.3f} nats (the best any model can score)\n")
    print("| system | steps | test log-likelihood (nats) | KL to the data | energy distance | "
          "modes with >= 5% | 10,000 samples (s) |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        ll = "none (no density)" if r["ll"] is None else f"{r['ll']:.3f} ({r['kind']})"
        kl = "-" if r["kl"] is None else f"{r['kl']:.3f}"
        modes = "-" if r["modes"] is None else f"{r['modes']}/8"
        print(f"| {r['system']} | {r['steps']} | {ll} | {kl} | {r['energy']:.4f} | {modes} | "
              f"{r['sample s']:.3f} |")


if __name__ == "__main__":
    main()
