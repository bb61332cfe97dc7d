"""DDP on CPU (gloo): two processes split the PK batches, stay in sync, and only rank 0 writes."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from esreid.engine.trainer import Trainer
from esreid.models import MODELS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tmp: str, cfg) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trainer = Trainer(cfg, progress=False, log=lambda s: None)
    assert len(trainer.train_loader) == len(trainer.train_loader.batch_sampler) and trainer.dist.world_size == world
    trainer.train()
    torch.save(trainer.model.state_dict(), f"{tmp}/rank{rank}.pt")
    gens = {k: g.get_state() for k, g in trainer.generators().items() if k.startswith("model.")}
    torch.save({"model_generators": gens, "augment": trainer.augment.generator.get_state()}, f"{tmp}/rng{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS.names())
def test_two_process_ddp_training(tmp_path, tiny_config, name):
    # generate the data once, before the processes race for it
    from esreid.data.datasets.synthetic import generate_synthetic_market

    generate_synthetic_market(str(tmp_path / "data" / "synthetic"), num_train_ids=16, num_test_ids=8,
                              images_per_id=6, height=64, width=32)
    # 192x64 images give a 12x4 layer4 map, on which every model's default settings are valid (PMM's 3x2 blocks)
    cfg = tiny_config(name, epochs=2, extra=["checkpoint_period=0", "data.height=192", "data.width=64"])
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), cfg), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key in a:
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.allclose(a[key], b[key], atol=1e-6), key  # gradients were averaged: same weights
    # model generators (DropBlock region, BESM coins) advance alike on every rank: one region per global step;
    # augmentation differs per rank
    r0, r1 = (torch.load(tmp_path / f"rng{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["model_generators"].keys() == r1["model_generators"].keys()
    for key, state in r0["model_generators"].items():
        assert torch.equal(state, r1["model_generators"][key]), key
    assert not torch.equal(r0["augment"], r1["augment"])
    files = set(os.listdir(tmp_path / "run"))
    assert {"last.pth", "results.json", "metrics.jsonl", "config.yaml"} <= files
