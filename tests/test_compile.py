"""Regional compilation (solver.compile): every model's regions compile without graph breaks, nothing recompiles
after one training step and one evaluation, and the compiled model computes what the eager one does."""

import pytest
import torch
from torch._dynamo.utils import counters

from esreid.config import load_config
from esreid.engine.compile import compile_model
from esreid.engine.hooks import HookBase
from esreid.engine.trainer import Trainer
from esreid.models import MODELS, build_model

H, W, IDS, K = 192, 64, 4, 2  # 192x64: a 12x4 layer4 map, valid for every model's defaults


def tiny_model(name, seed=0):
    cfg = load_config(None, [f"model.name={name}", "model.backbone=resnet_tiny", f"data.height={H}",
                             f"data.width={W}", f"data.ids_per_batch={IDS}", f"data.instances={K}"])
    torch.manual_seed(seed)  # same weights and same model RNG seeds for the same seed
    return build_model(cfg.model, 10, cfg.test)


def batch(n=IDS * K, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, H, W, generator=g), torch.arange(IDS).repeat_interleave(K)[:n]


def train_step(model, images, pids):
    """Loss terms and parameter gradients of one training forward + backward."""
    model.train()
    model.zero_grad(set_to_none=True)
    terms = model(images, pids)
    sum(terms.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in terms.items()}, grads


def extract(model, sizes):
    model.eval()
    with torch.no_grad():
        return [model.retrieval_features(batch(n, seed=n)[0]) for n in sizes]


def assert_same(got, want):
    """Same keys and values up to float reordering: max |difference| <= 1e-4 x the largest |value| (AOTAutograd's
    decompositions round differently; a wrong region, a detached one or frozen weights differ by far more)."""
    assert got.keys() == want.keys()
    for k in want:
        assert (got[k] - want[k]).abs().max() <= 1e-4 * want[k].abs().max() + 1e-7, k


def step_and_extract(compiled, eager, sizes):
    """A training step and an extraction with each batch size in ``sizes`` on both models; compares the results."""
    images, pids = batch()
    (terms, grads), (want_terms, want_grads) = train_step(compiled, images, pids), train_step(eager, images, pids)
    assert_same(terms, want_terms)
    assert_same(grads, want_grads)
    assert_same(dict(enumerate(extract(compiled, sizes))), dict(enumerate(extract(eager, sizes))))


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS.names())
def test_regions_compile_once_and_compute_the_eager_result(name):
    torch._dynamo.reset()
    counters.clear()
    eager, compiled = tiny_model(name), tiny_model(name)
    keys = list(compiled.state_dict())
    regions = compile_model(compiled, backend="aot_eager")  # dynamo + AOTAutograd as inductor sees them, no codegen
    assert regions and list(compiled.state_dict()) == keys  # compiled in place: checkpoints keep their keys
    step_and_extract(compiled, eager, [8, 5])  # warm-up: train, eval, a partial last batch
    assert counters["stats"]["unique_graphs"] >= len(regions)
    assert not counters["graph_break"], dict(counters["graph_break"])
    counters.clear()
    step_and_extract(compiled, eager, [8, 5, 3])  # 3: a new last-batch size (the batch dimension is dynamic now)
    assert not counters["frames"]["total"], f"recompiled after warm-up: {dict(counters['frames'])}"
    assert not counters["graph_break"], dict(counters["graph_break"])


class CountAfterFirstEpoch(HookBase):
    """Clears dynamo's counters after the first epoch (its training steps and its evaluation: the warm-up)."""

    def after_epoch(self):
        if self.trainer.state.epoch == 0:
            counters.clear()


@pytest.mark.slow
def test_trainer_compiles_esnet_without_recompiling_after_the_first_epoch(tiny_config):
    torch._dynamo.reset()
    counters.clear()
    trainer = Trainer(tiny_config("esnet", epochs=2, extra=["solver.compile=true"]), progress=False,
                      log=lambda s: None, hooks=[CountAfterFirstEpoch()])
    metrics = trainer.train()  # 2 epochs, each with its evaluation (tiny_config evaluates every epoch)
    assert 0 <= metrics["mAP"] <= 1
    assert not counters["frames"]["total"], dict(counters["frames"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert all(m._compiled_call_impl is not None for m in trainer.model.compile_regions())
