"""What the user did wrong (or what went wrong) -> the exact message: every row runs the real CLI (``esreid.cli.main``)
and checks the exit status and the one line it prints. README's "When things go wrong" shows the same table
(:func:`test_readme_shows_this_table`).

Placeholders in the messages: ``{run}`` the output_dir, ``{data}`` the dataset root, ``{dir}`` the folder of the
config files, ``{models}`` the registered model names; ``{…}`` stands for numbers that depend on the machine (loss
values, sizes) and matches any text.
"""

import os
import re
import shutil
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, List, Optional

import pytest
import torch
import yaml

import esreid.files as files
from esreid.cli import main
from esreid.config import to_dict
from esreid.models import MODELS

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


@dataclass
class Row:
    what: str  # what the user did (or what happened), as README shows it
    argv: List[str]  # esreid arguments; {config} is the tiny run's config file, {run}, {data}, {dir} as above
    message: str  # the line printed (stderr; stdout for exit status 0)
    code: int = 2
    setup: Optional[Callable] = None  # setup(ctx) before the command runs


TRAIN = ["train", "--config", "{config}", "--no-progress"]
RESUME = TRAIN + ["--resume", "auto"]


# --- setups ---------------------------------------------------------------------------------------------------------
def trained(ctx):
    """A finished 1-epoch run in {run}."""
    shutil.copytree(ctx.trained, ctx.run)


def config_file(name, text):
    def setup(ctx):
        with open(os.path.join(ctx.dir, name), "w") as f:
            f.write(text)
    return setup


def cycle(ctx):
    config_file("a.yaml", "_base_: b.yaml\n")(ctx)
    config_file("b.yaml", "_base_: a.yaml\n")(ctx)


def own_data(ctx):
    """A copy of the dataset in {data} (this row damages it)."""
    shutil.copytree(ctx.shared_data, ctx.data)


def first_query(ctx):
    folder = os.path.join(ctx.data, "synthetic", "query")
    return os.path.join(folder, sorted(os.listdir(folder))[0])


def remove_query_images(ctx):
    own_data(ctx)
    folder = os.path.dirname(first_query(ctx))
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))


def corrupt_query_image(ctx):
    own_data(ctx)
    with open(first_query(ctx), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not a jpeg")


# --- setups of the untrusted-input rows (issue 21) ---
def laughs(ctx):
    """A mapping billion laughs: 10 anchors of 4 aliases of the one before (4**9 copies of the first)."""
    lines = ["a0: &a0 {x: 1}"] + [f"a{i}: &a{i} {{" + ", ".join(f"k{j}: *a{i - 1}" for j in range(4)) + "}"
                                  for i in range(1, 10)]
    config_file("bomb.yaml", "test:\n  protocol_args:\n" + "".join(f"    {line}\n" for line in lines))(ctx)


def latin1(ctx):
    with open(os.path.join(ctx.dir, "latin.yaml"), "wb") as f:
        f.write("solver:\n  lr: 0.001  # d\xe9faut\n".encode("latin-1"))


def last_image(ctx, split):
    folder = os.path.join(ctx.data, "synthetic", split)
    return os.path.join(folder, sorted(os.listdir(folder))[-1])


def fifo_gallery_image(ctx):
    own_data(ctx)
    path = last_image(ctx, "bounding_box_test")
    os.remove(path)
    os.mkfifo(path)


def huge_query_image(ctx):
    from PIL import Image

    own_data(ctx)
    Image.new("RGB", (4096, 4096)).save(last_image(ctx, "query"))


def corrupt_last_gallery_image(ctx):
    """Found before the first step: training must not start."""
    from esreid.engine.trainer import Trainer

    own_data(ctx)
    with open(last_image(ctx, "bounding_box_test"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not a jpeg")
    ctx.monkeypatch.setattr(Trainer, "train_step", lambda self, batch: pytest.fail("training started"))


def npz_bomb(ctx):
    import numpy as np

    import esreid.evaluation.search as search

    np.savez_compressed(os.path.join(ctx.dir, "bomb.npz"), feats=np.zeros((2_000_000, 8), np.float32))
    ctx.monkeypatch.setattr(search, "available_memory", lambda: 10_000_000, raising=False)


def object_npz(ctx):
    import numpy as np

    np.savez(os.path.join(ctx.dir, "objects.npz"), feats=np.ones((3, 4), np.float32),
             paths=np.array([{"a": 1}] * 3, dtype=object))


def saved_index(damage):
    def setup(ctx):
        import numpy as np

        from esreid.evaluation.search import GalleryIndex

        feats = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
        np.savez(os.path.join(ctx.dir, "q.npz"), feats=feats[:3])
        path = os.path.join(ctx.dir, "index.npz")
        GalleryIndex("flat").add(feats).save(path)
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        if damage == "truncate":
            arrays["index"] = arrays["index"][: len(arrays["index"]) // 2]
        else:
            arrays["ids"] = np.arange(40)
        np.savez(path, **arrays)
    return setup


class Malicious:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def malicious_checkpoint(ctx):
    import esreid.engine.checkpoint as checkpoint

    checkpoint.atomic_save({"format": checkpoint.FORMAT, "model": Malicious()}, os.path.join(ctx.dir, "evil.pth"))


def damaged_checkpoint(how):
    def setup(ctx):
        trained(ctx)
        path = os.path.join(ctx.run, "last.pth")
        raw = bytearray(open(path, "rb").read())
        if how == "flip":
            raw[len(raw) // 2] ^= 1
        else:
            raw = raw[: len(raw) // 2]
        with open(path, "wb") as f:
            f.write(raw)
    return setup


def weights_only(ctx):
    state = torch.load(os.path.join(ctx.trained, "last.pth"), weights_only=True)["model"]
    torch.save(state, os.path.join(ctx.dir, "weights.pth"))


def output_dir_is_a_file(ctx):
    with open(ctx.run, "w") as f:
        f.write("not a folder")


def read_only(ctx):
    ctx.storage.simulate_read_only(ctx.monkeypatch)


def disk_full(ctx):
    ctx.storage.simulate_full_disk(ctx.monkeypatch, 50_000)  # each file written holds 50 kB: the checkpoint does not


def tiny_free_space(ctx):
    usage = type(shutil.disk_usage(ctx.dir))(total=10**12, used=10**12 - 100_000, free=100_000)
    ctx.monkeypatch.setattr(files.shutil, "disk_usage", lambda path: usage)


def running(ctx):
    """A training process holds {run} (here this process, through another open lock file: flock tells them apart)."""
    from esreid.engine.runlock import RunLock

    ctx.lock = RunLock(ctx.run).acquire()  # released when ctx goes


def corrupt_model_best(ctx):
    trained(ctx)
    path = os.path.join(ctx.run, "model_best.pth")
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 1
    with open(path, "wb") as f:
        f.write(raw)


def trained_and_running(ctx):
    trained(ctx)
    running(ctx)


def ctrl_c(ctx):
    from esreid.engine.trainer import Trainer

    real = Trainer.train_step

    def step(self, batch):
        if self.state.iter == 14:
            raise KeyboardInterrupt
        return real(self, batch)

    trained(ctx)
    ctx.monkeypatch.setattr(Trainer, "train_step", step)


ROWS = [
    # --- command line ---
    Row("`esreid train` without `--config`", ["train"],
        "esreid: error: the following arguments are required: --config (see 'esreid train --help')"),
    Row("a config file that does not exist", ["train", "--config", "{dir}/nowhere.yaml"],
        "esreid: error: argument --config: file not found: {dir}/nowhere.yaml (see 'esreid train --help')"),
    Row("an override where a checkpoint belongs", TRAIN + ["--resume", "solver.epochs=10"],
        "esreid: error: argument --resume: expected 'auto' or a checkpoint path, got the override 'solver.epochs=10' "
        "(write: --resume auto solver.epochs=10) (see 'esreid train --help')"),
    Row("an override without a value", TRAIN + ["solver.lr"],
        "esreid: error: unexpected argument 'solver.lr' (config overrides look like section.key=value) (see 'esreid "
        "train --help')"),
    # --- config ---
    Row("a misspelt key", TRAIN + ["solver.lrr=0.1"], "esreid: error: command line: unknown key 'solver.lrr'; expected "
        "one of: amp, channels_last, compile, epochs, gamma, grad_clip, lr, milestones, momentum, optimizer, sync_bn, "
        "warmup_epochs, warmup_factor, weight_decay"),
    Row("a value of the wrong type", TRAIN + ["solver.epochs=ten"],
        "esreid: error: command line: key 'solver.epochs': expected an integer, got 'ten'"),
    Row("a NaN", TRAIN + ["solver.lr=.nan"],
        "esreid: error: command line: key 'solver.lr': expected a finite number, got nan"),
    Row("an absurdly large number (`solver.lr=1e39`)", TRAIN + ["solver.lr=1e39"], "esreid: error: command line: key "
        "'solver.lr': expected a number of magnitude <= 1e+30 (training computes in float32), got 1e+39"),
    Row("a decay factor above 1 (`solver.gamma=1e9`)", TRAIN + ["solver.gamma=1e9"],
        "esreid: error: command line: key 'solver.gamma': expected a value <= 1, got 1000000000.0"),
    Row("a zero learning rate", TRAIN + ["solver.lr=0"],
        "esreid: error: command line: key 'solver.lr': expected a value > 0, got 0.0"),
    Row("a milestone after the last epoch", TRAIN + ["solver.milestones=[5]"], "esreid: error: command line: key "
        "'solver.milestones': milestone 5 lies after the last of the 1 epochs (0-based epoch from which the lr is "
        "multiplied by gamma); lower it"),
    Row("an unknown model", TRAIN + ["model.name=esnte"], "esreid: error: command line: key 'model.name': unknown "
        "model 'esnte'; expected one of: {models}"),
    Row("a section set to a value", TRAIN + ["solver=0.1"], "esreid: error: command line: override 'solver=0.1': "
        "'solver' is a section; set its keys (e.g. solver.<key>=<value>) or give a mapping (solver={<key>: <value>})"),
    Row("a config file that is not valid YAML", ["train", "--config", "{dir}/bad.yaml"], "esreid: error: "
        "{dir}/bad.yaml: not valid YAML: while parsing a flow sequence; in \"{dir}/bad.yaml\", line 1, column 9; "
        "expected ',' or ']', but got '<stream end>'; in \"{dir}/bad.yaml\", line 2, column 1",
        setup=config_file("bad.yaml", "solver: [1, 2\n")),
    Row("a config file holding a list", ["train", "--config", "{dir}/list.yaml"],
        "esreid: error: {dir}/list.yaml: expected a mapping at the top level, got list",
        setup=config_file("list.yaml", "- 1\n- 2\n")),
    Row("two configs that include each other", ["train", "--config", "{dir}/a.yaml"],
        "esreid: error: {dir}/a.yaml: _base_ cycle: {dir}/a.yaml -> {dir}/b.yaml -> {dir}/a.yaml", setup=cycle),
    Row("an unknown device", TRAIN + ["device=gpu"],
        "esreid: error: command line: key 'device': expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    Row("a Cutout square larger than the image", TRAIN + ["data.cutout_prob=0.5", "data.cutout_size=40"],
        "esreid: error: command line: key 'data.cutout_size': the 40x40 Cutout square does not fit in 32x16 images; "
        "lower it or set cutout_prob=0"),
    Row("PMM blocks that do not divide the feature map", TRAIN + ["model.name=pmm"], "esreid: error: {config}: "
        "key 'model.block_size': the 2x1 layer4 map of 32x16 images is not a multiple of the 3x2 block (e.g. 3x2 for "
        "24x8 at 384x128): choose a block size that divides it"),
    Row("both loss weights 0", TRAIN + ["model.loss.ce_weight=0", "model.loss.triplet_weight=0"],
        "esreid: error: command line: key 'model.loss.ce_weight': both loss weights (ce_weight, triplet_weight) are 0: "
        "nothing would be trained; set one of them > 0"),
    Row("a triplet loss with one image per identity", TRAIN + ["data.instances=1"], "esreid: error: command line: "
        "key 'data.instances': the triplet loss needs at least 2 images per identity in a batch (or set "
        "model.loss.triplet_weight=0)"),
    Row("a divergence factor of 1", TRAIN + ["guard.divergence_factor=1"], "esreid: error: command line: key "
        "'guard.divergence_factor': expected 0 (off) or a factor > 1 of the untrained model's loss, got 1.0 (default "
        "10)"),
    Row("an unknown dataset option", TRAIN + ["data.args={num_train_idz: 3}"], "esreid: error: command line: key "
        "'data.args': dataset 'synthetic': unknown option(s) ['num_train_idz']; it accepts: num_train_ids, "
        "num_test_ids, images_per_id, height, width, seed, num_junk, num_distractors, trap, palette, test_rendering"),
    Row("`device=cuda` on a machine without CUDA", TRAIN + ["device=cuda"], "esreid: error: key 'device': 'cuda' "
        "requested but CUDA is not available here; use device=cpu or auto"),
    # --- dataset ---
    Row("a dataset that is not under data.root", TRAIN + ["data.name=market1501", "data.args={}", "data.root={dir}"],
        "esreid: error: Market-1501: no 'bounding_box_train' under {dir} (looked in {dir}/market1501/"
        "Market-1501-v15.09.15, {dir}/market1501, {dir}/Market-1501-v15.09.15, {dir})"),
    Row("a test set that is not under its root (before training starts)",
        TRAIN + ["test.datasets=[synthetic, {name: dukemtmcreid, root: '{dir}'}]"], "esreid: error: test set "
        "'dukemtmcreid': DukeMTMC-reID: no 'bounding_box_train' under {dir} (looked in {dir}/dukemtmc-reid/"
        "DukeMTMC-reID, {dir}/DukeMTMC-reID, {dir}/dukemtmc-reid, {dir})"),
    Row("more identities per batch than the dataset has", TRAIN + ["data.ids_per_batch=32"], "esreid: error: "
        "command line: key 'data.ids_per_batch': 32 identities per batch but the train split of synthetic has 16; "
        "lower it"),
    Row("every query image deleted", TRAIN + ["data.root={data}"], "esreid: error: Synthetic Market-1501: the query "
        "split is empty: no usable images in {data}/synthetic/query", setup=remove_query_images),
    Row("a corrupt query image", TRAIN + ["data.root={data}"], "esreid: error: {data}/synthetic/query/"
        "0190_c2s1_000018_01.jpg: corrupt or unsupported image ({…})", setup=corrupt_query_image),
    Row("no folder of datasets under the root", ["datasets", "check", "--root", "{dir}"], "esreid: error: datasets "
        "check: no known dataset under {dir} (looked for: cuhk03, dukemtmcreid, market1501, msmt17, occluded_duke, "
        "vehicleid, veri776; and custom data: {train,query,gallery}.csv or train/ query/ gallery/ folders)"),
    Row("a CG-RAM layer the model does not have", TRAIN + ["diagnostics.erased_loss=true", "diagnostics.layer=nope"],
        "esreid: error: command line: key 'diagnostics.layer': CG-RAM layer 'nope' is not a module of Baseline; did "
        "you mean one of head, head.pool, head.bn, head.classifier? (the names are those of model.named_modules())"),
    Row("a missing ImageNet weights file", TRAIN + ["model.pretrained={dir}/resnet.pth"],
        "esreid: error: command line: key 'model.pretrained': weights file not found: {dir}/resnet.pth (no such "
        "file); fix the path, use torchvision:<backbone> (e.g. torchvision:resnet50), or model.pretrained='' for "
        "random weights"),
    # --- untrusted inputs (issue 21) ---
    Row("a YAML \"billion laughs\" config (aliases of aliases)", ["train", "--config", "{dir}/bomb.yaml"],
        "esreid: error: {dir}/bomb.yaml: YAML document refused: expands into more than 100,000 nodes once its aliases "
        "are replaced (line 11); a config needs a few hundred: write the values out, or use _base_ files to share "
        "them", setup=laughs),
    Row("a config nested 100 levels deep", ["train", "--config", "{dir}/deep.yaml"], "esreid: error: "
        "{dir}/deep.yaml: YAML document refused: nested deeper than 50 levels (at line 3, column 55)",
        setup=config_file("deep.yaml", "data:\n  args:\n    x: " + "[" * 100 + "]" * 100 + "\n")),
    Row("a config saved in Latin-1", ["train", "--config", "{dir}/latin.yaml"], "esreid: error: {dir}/latin.yaml: "
        "not UTF-8 text (byte 0xe9 on line 2, e.g. a Latin-1 accent): save the file as UTF-8", setup=latin1),
    Row("a FIFO named like a gallery image", TRAIN + ["data.root={data}"], "esreid: error: {data}/synthetic/"
        "bounding_box_test/1190_c2s1_000491_01.jpg: not a regular file (a FIFO / named pipe): an image must be a "
        "plain file; replace or remove it", setup=fifo_gallery_image),
    Row("a 4096x4096 query image", TRAIN + ["data.root={data}"], "esreid: error: {data}/synthetic/query/"
        "1190_c2s1_000483_01.jpg: a 4096x4096 image (16.8 megapixels) is larger than the 16 megapixels esreid "
        "decodes (re-ID crops are well under 1): crop or downscale it, or remove it from the data",
        setup=huge_query_image),
    Row("a corrupt gallery image (found before training)", TRAIN + ["data.root={data}"], "esreid: error: {data}/"
        "synthetic/bounding_box_test/1190_c2s1_000491_01.jpg: corrupt or unsupported image ({…})",
        setup=corrupt_last_gallery_image),
    Row("synthetic data of 10^8 images per identity", TRAIN + ["data.args={images_per_id: 100000000}"], "esreid: "
        "error: command line: key 'data.args': dataset 'synthetic': synthetic: these options generate up to "
        "30,800,000,080 images, more than the 200,000 allowed (MSMT17, the largest person set, has 126,441): lower "
        "images_per_id (now 100,000,000), the numbers of ids or num_junk / num_distractors"),
    Row("re-ranking that does not fit its memory budget", TRAIN + ["test.rerank=true",
                                                                    "test.protocol_args={memory_budget_mb: 1}"],
        "esreid: error: command line: key 'test.rerank': re-ranking {…} queries against {…} gallery images needs "
        "about {…} MB (the {…} re-ranked distance matrix alone is 0 MB), more than memory_budget_mb=1: raise "
        "test.protocol_args.memory_budget_mb or set test.rerank=false"),
    Row("an .npz zip bomb (more than the memory available)", ["search", "--gallery", "{dir}/bomb.npz", "--query",
                                                              "{dir}/bomb.npz"],
        "esreid: error: {dir}/bomb.npz: its arrays inflate to 64.0 MB (64000128 bytes), more than the 10.0 MB "
        "(10000000 bytes) of memory available here (a zip bomb, or features too large for this machine): check where "
        "the file comes from, or search on a machine with more memory", setup=npz_bomb),
    Row("an .npz holding Python objects", ["search", "--gallery", "{dir}/objects.npz", "--query", "{dir}/objects.npz"],
        "esreid: error: {dir}/objects.npz: array 'paths' holds Python objects (dtype object), which only pickle can "
        "load and esreid never unpickles a features file: write it with esreid extract (numbers and strings only)",
        setup=object_npz),
    Row("a damaged faiss index", ["search", "--load-index", "{dir}/index.npz", "--query", "{dir}/q.npz"],
        "esreid: error: {dir}/index.npz: the faiss index in it is damaged ({…}); build it again with esreid search "
        "--gallery FEATS.npz --save-index", setup=saved_index("truncate")),
    Row("a faiss index with more ids than vectors", ["search", "--load-index", "{dir}/index.npz", "--query",
                                                     "{dir}/q.npz"],
        "esreid: error: {dir}/index.npz: inconsistent saved index: its faiss index holds 20 vectors but the file has "
        "40 ids; build it again with esreid search --gallery FEATS.npz --save-index", setup=saved_index("ids")),
    Row("a checkpoint that would run code when unpickled", ["eval", "--config", "{config}", "--weights",
                                                            "{dir}/evil.pth"],
        "esreid: error: {dir}/evil.pth: holds Python objects (posix.system) that a weights-only load refuses to "
        "create: esreid reads tensors and plain values only and never runs code from a file; use a weights file "
        "written by esreid, or have whoever made it save plain tensors (a state dict)", setup=malicious_checkpoint),
    # --- runs and checkpoints ---
    Row("training again into the folder of a run", TRAIN, "esreid: error: output_dir '{run}' already holds a run "
        "({run}/last.pth); pass --resume auto to continue it or choose another output_dir (nothing was overwritten)",
        setup=trained),
    Row("a second `esreid train` into the folder of a run being trained", TRAIN, "esreid: error: output_dir {run} is "
        "in use by another training process (pid {…} on host {…}, since {…}; lock file {run}/.esreid.lock); wait "
        "until it ends or stop it, or choose another output_dir", setup=running),
    Row("`--resume auto` while the run still trains", RESUME, "esreid: error: output_dir {run} is in use by another "
        "training process (pid {…} on host {…}, since {…}; lock file {run}/.esreid.lock); wait until it ends or stop "
        "it, or choose another output_dir", setup=trained_and_running),
    Row("resuming with a corrupt model_best.pth (exit 0, the run goes on)", RESUME + ["solver.epochs=2"],
        "re-created {run}/model_best.pth (epoch 1, mAP {…}) from {run}/last.pth: it was corrupt", code=0,
        setup=corrupt_model_best),
    Row("`--resume auto` where no run is", RESUME, "esreid: error: --resume auto: output_dir {run} holds no run to "
        "continue ({run}/last.pth not found); start without --resume, or pass the path of a checkpoint"),
    Row("resuming a checkpoint with a flipped byte", RESUME, "esreid: error: checkpoint {run}/last.pth is corrupt "
        "(checksum mismatch: its bytes changed after it was written, e.g. a disk or copy error); use another "
        "checkpoint (model_best.pth, epoch_001.pth in {run}) or retrain", setup=damaged_checkpoint("flip")),
    Row("resuming a truncated checkpoint", RESUME, "esreid: error: checkpoint {run}/last.pth is corrupt (truncated or "
        "damaged: it ends with neither its checksum nor the end of a zip archive); use another checkpoint "
        "(model_best.pth, epoch_001.pth in {run}) or retrain", setup=damaged_checkpoint("truncate")),
    Row("resuming from a weights-only file", TRAIN + ["--resume", "{dir}/weights.pth"], "esreid: error: "
        "{dir}/weights.pth: holds model weights only; resuming needs a full training checkpoint", setup=weights_only),
    Row("resuming with another learning rate", RESUME + ["solver.epochs=2", "solver.lr=0.01"], "esreid: error: "
        "resuming {run}/last.pth with a config that changes the run: solver.lr 0.001 -> 0.01; the checkpoint was "
        "trained with the old values: keep them, or continue with the new ones by adding --allow-changes solver.lr, "
        "or start a new run in another output_dir", setup=trained),
    Row("resuming with another optimiser", RESUME + ["solver.epochs=2", "solver.optimizer=sgd"], "esreid: error: "
        "resuming {run}/last.pth with a config that changes the run: solver.optimizer 'adam' -> 'sgd'; the checkpoint "
        "was trained with the old values: keep them, or continue with the new ones by adding --allow-changes "
        "solver.optimizer, or start a new run in another output_dir", setup=trained),
    Row("`--allow-changes` naming no key", RESUME + ["--allow-changes", "solver.lrr"], "esreid: error: "
        "--allow-changes: 'solver.lrr' is not a config key or section (e.g. solver.lr, solver)", setup=trained),
    Row("`--allow-changes` without `--resume`", TRAIN + ["--allow-changes", "solver.lr"], "esreid: error: "
        "--allow-changes names what a resumed run may change; add --resume auto (or a checkpoint path)"),
    Row("resuming a finished run (exit 0, its results follow)", RESUME, "=> the run in {run} is finished: its "
        "checkpoint is at epoch 1 and solver.epochs is 1 (raise it to train longer)", code=0, setup=trained),
    Row("evaluating the weights of another model", ["eval", "--config", "{config}", "--weights", "{run}/last.pth",
                                                    "model.name=esnet"],
        "esreid: error: {run}/last.pth: weights do not fit the model built from the config: missing keys "
        "['aib.head.bn.bias', 'aib.head.bn.num_batches_tracked', 'aib.head.bn.running_mean', "
        "'aib.head.bn.running_var', 'aib.head.bn.weight', 'aib.head.classifier.weight', "
        "'aib.stages.layer3.0.bn1.bias', 'aib.stages.layer3.0.bn1.num_batches_tracked'] ..., unexpected keys "
        "['backbone.bn1.bias', "
        "'backbone.bn1.num_batches_tracked', 'backbone.bn1.running_mean', 'backbone.bn1.running_var', "
        "'backbone.bn1.weight', 'backbone.conv1.weight', 'backbone.layer1.0.bn1.bias', "
        "'backbone.layer1.0.bn1.num_batches_tracked'] ...", setup=trained),
    # --- disk ---
    Row("an output_dir that is a file", TRAIN, "esreid: error: output_dir {run} is a file, not a folder; choose "
        "another path", setup=output_dir_is_a_file),
    Row("a read-only output folder", TRAIN, "esreid: error: output_dir {run} is not writable (Read-only file system); "
        "choose another folder or make it writable", setup=read_only),
    Row("the disk filling up during a checkpoint", TRAIN, "esreid: error: cannot write {run}/last.pth: No space left "
        "on device; free space on that disk or choose a folder on another disk (files already there were left intact)",
        setup=disk_full),
    Row("too little free space for a checkpoint", TRAIN, "esreid: error: not enough free space in {run} for "
        "checkpoint last.pth: needs {…} free; free some space on that disk or choose a folder on another disk",
        setup=tiny_free_space),
    # --- training ---
    Row("a learning rate far too high (`solver.lr=1e6`)", TRAIN + ["solver.lr=1e6"], "esreid: error: training "
        "diverged at epoch 1, iteration 4: the loss stayed above 10 x the untrained model's loss {…} for 3 steps "
        "(ce={…}, triplet={…}, loss={…}); no checkpoint was written yet; lower solver.lr (now 1e+06) or set "
        "solver.grad_clip, then start again"),
    Row("a learning rate that overflows (`solver.lr=1e30`)", TRAIN + ["solver.lr=1e30"], "esreid: error: non-finite "
        "loss at epoch 1, iteration 2 (ce=nan, triplet=nan, loss=nan); no checkpoint was written yet; lower solver.lr "
        "(now 1e+30) or set solver.grad_clip, then start again"),
    Row("Ctrl-C during training (exit 130, after the line `esreid: interrupted`)", RESUME + ["solver.epochs=3"],
        "esreid: interrupted at epoch 2, iteration 14; continue with: esreid train --config {config} solver.epochs=3 "
        "--no-progress --resume auto", code=130, setup=ctrl_c),
]


def fill(text, ctx):
    for name in ("config", "run", "data", "dir", "models"):
        text = text.replace("{" + name + "}", getattr(ctx, name))
    return text


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return tmp_path_factory.mktemp("shared")


@pytest.fixture
def ctx(tmp_path, tiny_config, shared, storage, monkeypatch):
    """Paths of a row: {dir} (tmp_path), {run}, {data}; the tiny 1-epoch config in {config}; ``trained``, a finished
    1-epoch run (made once for the module)."""
    from esreid.engine.trainer import Trainer

    if not (shared / "run" / "last.pth").exists():
        Trainer(tiny_config(epochs=1, root=shared), progress=False, log=lambda line: None).train()
    run, data = tmp_path / "run", tmp_path / "data"
    raw = to_dict(tiny_config(epochs=1, root=shared, extra=[f"output_dir={run}"]))
    raw["model"] = {k: raw["model"][k] for k in ("name", "backbone")}  # the rest are the model's defaults
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return SimpleNamespace(dir=str(tmp_path), run=str(run), data=str(data), shared_data=str(shared / "data"),
                           trained=str(shared / "run"), config=str(config), storage=storage, monkeypatch=monkeypatch,
                           models=", ".join(MODELS.names()))


def as_pattern(message):
    return "".join(".*?" if part == "{…}" else re.escape(part) for part in re.split(r"(\{…\})", message))


@pytest.mark.parametrize("row", ROWS, ids=[r.what for r in ROWS])
def test_failure(row, ctx, capsys):
    if "device=cuda" in row.argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if row.setup is not None:
        row.setup(ctx)
    code = main([fill(a, ctx) for a in row.argv])
    out, err = capsys.readouterr()
    expected = as_pattern(fill(row.message, ctx))
    if row.code == 0:
        assert err == "" and any(re.fullmatch(expected, line) for line in out.splitlines()), out
    elif row.code == 130:
        assert err.startswith("esreid: interrupted\n") and re.fullmatch(expected, err[len("esreid: interrupted\n"):-1])
    else:
        assert err.endswith("\n") and err.count("\n") == 1 and re.fullmatch(expected, err[:-1]), err
    assert code == row.code


def test_there_are_at_least_30_rows():
    assert len(ROWS) >= 30 and len({r.what for r in ROWS}) == len(ROWS)


def readme_rows():
    text = open(README, encoding="utf-8").read()
    section = text.split("## When things go wrong\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| what")]
    return [tuple(cell.strip() for cell in line.strip("|").split(" | ")) for line in lines]


def readme_row(row):
    return row.what, str(row.code), f"`{row.message}`"


def test_readme_shows_this_table():
    assert readme_rows() == [readme_row(r) for r in ROWS]
