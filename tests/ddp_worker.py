"""One process of the DistributedDataParallel test, launched by tests/test_train.py as

    python -m torch.distributed.run --nproc_per_node=2 --standalone tests/ddp_worker.py OUT_DIR

Each rank starts from a *different* initialisation (DDP must broadcast rank 0's), trains
with flowlib.train.fit on the same synthetic data (fit shards it), and writes its final
parameters and curves to OUT_DIR/rank{r}.pt for the test to compare.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import flowlib
from flowlib.elementwise import Affine, SinhArcsinh
from flowlib.train import fit


def main(out: Path) -> None:
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    torch.manual_seed(100 + rank)  # deliberately different starting weights on each rank
    flow = flowlib.Compose(Affine(2), SinhArcsinh(2), Affine(2))
    model = flowlib.FlowModel(flow, flowlib.StandardNormal(2))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 2, generator=g) * torch.tensor([0.5, 2.0]) + torch.tensor([2.0, -1.0])
    val = torch.randn(512, 2, generator=g) * torch.tensor([0.5, 2.0]) + torch.tensor([2.0, -1.0])
    result = fit(model, x, val_data=val, steps=80, batch_size=64, lr=2e-2, eval_every=20, seed=3,
                 progress=False, checkpoint=out / "ddp.pt")
    torch.save({"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "losses": result.losses, "val": result.val, "world_size": result.world_size,
                "steps": result.steps}, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
