"""Every config resolves and is the paper row it claims: the row -> config table of docs/methods.md §1.8 is read here,
compared with esreid/paper.py (what ``esreid ablate --table`` runs), and each mapped config is checked against the
definition of its row (below, from the paper's text: Base is CE only, the ESB rows use R = 10% / P = 0.3 on persons,
...). A config in configs/ that is neither a mapped row nor one of the other methods' recipes fails the test, so a new
config must be mapped (or listed) to be accepted."""

import glob
import os
import re

import pytest

from esreid.ablate import load_sweep
from esreid.config import load_config
from esreid.paper import TABLES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
TORCHVISION_R50 = "torchvision:resnet50"
VEHICLES = ("veri776", "vehicleid")
# configs of no ES-Net table row: the other methods' recipes (docs/methods.md §2-§4), CUHK03 (not in the paper), the
# BoT baseline on the vehicle datasets, the contract's example method (feature-level random erasing), and the models
# imported from other toolkits
OTHERS = {f"{d}/{m}" for d in ("market1501", "dukemtmcreid", "cuhk03") for m in ("bdb", "pmm", "aelm")} | {
    "cuhk03/base", "cuhk03/aib", "cuhk03/esnet", "veri776/aib", "vehicleid/aib", "market1501/feature_erasing",
    "occluded_duke/esnet"} | {
    f"market1501/import_{n}" for n in ("fastreid_bot", "fastreid_agw", "bot", "agw", "torchreid_resnet50",
                                       "torchreid_fc512")}  # other toolkits' models (tests/test_importers.py)


def docs_mapping():
    """(table, row label, config, datasets) of the §1.8 mapping table in docs/methods.md."""
    with open(os.path.join(ROOT, "docs", "methods.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("### §1.8 "):text.index("### §1.9 ")]
    head = "| table | row (as printed) | config | datasets |"
    lines = section[section.index(head):].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        table, label, config, datasets = [c.strip() for c in line.strip("|").split("|")]
        rows.append((table, label, config.strip("`"), tuple(d.strip() for d in datasets.split(","))))
    return rows


def paper_mapping():
    return [(t.name, r.label, r.config, t.folders()) for t in TABLES.values() for r in t.rows if r.config]


def test_docs_table_is_what_ablate_runs():
    docs = docs_mapping()
    assert len(docs) == 35
    assert docs == paper_mapping()


# ----------------------------------------------------------------------------------------------------------------
# What each row is (the paper's definitions; docs/methods.md §1.6, §1.8, §7 #2, #12-#14, §8)
# ----------------------------------------------------------------------------------------------------------------
ONE_BRANCH = {"model.name": "esnet", "model.aib": False, "model.esb": True, "model.saliency": "cgram"}
TWO_BRANCHES = {"model.name": "esnet", "model.aib": True, "model.esb": True, "model.saliency": "cgram",
                "model.shared_until": "layer2", "model.aib_pooling": "gap", "model.esb_pooling": "ppool",
                "model.loss.triplet_weight": 1.0}
CE_ONLY = {"model.loss.triplet_weight": 0.0, "model.loss.ce_weight": 1.0, "model.loss.label_smoothing": 0.0}
TRIPLET = {"model.loss.triplet_weight": 1.0, "model.loss.triplet_margin": 0.3, "model.loss.triplet": "batch_hard",
           "model.loss.soft_margin": False, "model.loss.label_smoothing": 0.0}


def erasing(r, p):
    return {"model.erase_ratio": r, "model.erase_prob": p, "model.erase_value": "black"}


def claims(config, vehicle):
    """The values that make ``config`` the row it claims; persons and vehicles differ only where §IV-B-2 says."""
    single = erasing(0.2, 0.5) if vehicle else erasing(0.1, 0.3)  # §IV-A-2 text; vehicles: ES-Net's 20% / 0.5
    base = {"model.name": "baseline", "model.pooling": "gap", "model.backbone": "resnet50", **CE_ONLY}
    rows = {
        "base": base,
        "aib": {**base, **TRIPLET},
        "base_besm": {**ONE_BRANCH, "model.esb_pooling": "gap", **CE_ONLY, **single},
        "base_besm_gmp": {**ONE_BRANCH, "model.esb_pooling": "gmp", **CE_ONLY, **single},
        "base_besm_ppool": {**ONE_BRANCH, "model.esb_pooling": "ppool", **CE_ONLY, **single},
        "esnet_esb_only": {**ONE_BRANCH, "model.esb_pooling": "ppool", **TRIPLET, **single},
        "esnet_esb_only_r20_p05": {**ONE_BRANCH, "model.esb_pooling": "ppool", **TRIPLET, **erasing(0.2, 0.5)},
        "esnet_r10_p03": {**TWO_BRANCHES, **TRIPLET, **erasing(0.1, 0.3)},
        "esnet": {**TWO_BRANCHES, **TRIPLET, **erasing(0.2, 0.5), "model.backbone": "resnet50"},
        "esnet_ppool_both": {**TWO_BRANCHES, **TRIPLET, **erasing(0.2, 0.5), "model.aib_pooling": "ppool"},
        "base_random_erasing": {**base, "data.random_erasing": 0.5},
        "base_gradcam_erasing": {**ONE_BRANCH, "model.saliency": "gradcam", "model.esb_pooling": "gap", **CE_ONLY,
                                 **single},
        "base_feature_dropping": {"model.name": "bdb", "model.global_head": "bnneck", **CE_ONLY},
        "agw": {"model.name": "agw", "model.backbone": "resnet50_nl", "model.pooling": "gem", "model.ppool_init": 3.0,
                "model.loss.triplet": "weighted", "model.loss.label_smoothing": 0.1, "model.loss.triplet_weight": 1.0,
                "data.height": 256, "data.width": 128, "data.pad": 10, "data.random_erasing": 0.5,
                "test.flip": False, "test.normalize": True, "solver.warmup_factor": 0.01,
                "model.center_weight": 5e-4, "model.center_lr": 0.5,  # AGW's CENTER_LOSS on (configs/AGW_baseline.yml)
                "solver.milestones": [39, 69]},  # its STEPS [40, 70] counted from 1 (utils/lr_scheduler.py)
        "esnet_agw": {**TWO_BRANCHES, **TRIPLET, **erasing(0.2, 0.5), "model.backbone": "resnet50_nl",
                      "model.aib_pooling": "gem"},
    }
    recipe = {"data.height": 256, "data.width": 256, "solver.epochs": 60, "solver.milestones": [20, 40]} if vehicle \
        else {"data.height": 384, "data.width": 128, "solver.epochs": 120, "solver.milestones": [40, 70]}
    common = {"model.last_stride": 1, "model.pretrained": TORCHVISION_R50, "solver.optimizer": "adam",
              "solver.lr": 3.5e-4, "solver.weight_decay": 5e-4, "data.ids_per_batch": 16, "data.instances": 4,
              "data.flip_prob": 0.5}
    return {**common, **recipe, **rows[config]}


def value(cfg, dotted):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


MAPPED = sorted({(d, c) for _, _, c, datasets in docs_mapping() for d in datasets})
BEYOND = [("vehicleid", "base_besm"), ("vehicleid", "base_besm_ppool")]  # Table X's rows on the other vehicle set
CHECKED = MAPPED + BEYOND


@pytest.mark.parametrize("folder, config", CHECKED, ids=[f"{d}/{c}" for d, c in CHECKED])
def test_mapped_config_is_the_row_it_claims(folder, config):
    cfg = load_config(os.path.join(CONFIGS, folder, f"{config}.yaml"))
    assert cfg.data.name == folder and cfg.output_dir == f"outputs/{folder}/{config}"
    wrong = {k: (value(cfg, k), v) for k, v in claims(config, folder in VEHICLES).items() if value(cfg, k) != v}
    assert wrong == {}  # key: (config's value, the row's)


@pytest.mark.parametrize("config", ["market1501/esnet", "veri776/esnet", "market1501/agw"])
def test_a_paper_rows_weight_decay_is_what_the_optimiser_applies(config):
    """§IV-A-2 "Adam ... with weight decay 5e-4": the run built from the row's config decays by exactly that. With a
    zero loss gradient Adam's first moment after one step is (1 - β1)·wd·θ for every decayed parameter."""
    import torch

    from esreid.engine.schedule import build_optimizer
    from esreid.models import build_model

    tiny = "resnet_tiny_nl" if config.endswith("agw") else "resnet_tiny"
    cfg = load_config(os.path.join(CONFIGS, f"{config}.yaml"), [f"model.backbone={tiny}", "model.pretrained="])
    torch.manual_seed(0)
    model = build_model(cfg.model, 5, cfg.test)
    opt = build_optimizer(model, cfg.solver)
    own = model.sgd_params()  # AGW's centres: their own SGD, no decay (AGW's center optimiser)
    params = {p: n for n, p in model.named_parameters() if p.requires_grad and n not in own}  # (frozen BNNeck biases)
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    before = {p: p.detach().clone() for group in opt.param_groups for p in group["params"]}
    opt.step()
    beta1 = opt.param_groups[0]["betas"][0]
    excluded = model.no_weight_decay()  # the pooling exponents (docs/methods.md §7 #7)
    assert len(excluded) <= 2 and len(before) == len(params)
    for p, theta in before.items():
        wd = 0.0 if params[p] in excluded else 5e-4
        torch.testing.assert_close(opt.state[p]["exp_avg"], (1 - beta1) * wd * theta, msg=params[p])


def test_every_config_resolves_and_is_mapped_or_another_method():
    paths = sorted(glob.glob(os.path.join(CONFIGS, "*", "*.yaml")))
    names = {os.path.relpath(p, CONFIGS)[:-5] for p in paths if not re.match(r"(_base_|sweeps|cross_domain)/",
                                                                               os.path.relpath(p, CONFIGS))}
    mapped = {f"{d}/{c}" for d, c in CHECKED}
    assert names == mapped | OTHERS, "map new configs in docs/methods.md §1.8 (or list other methods here)"
    for name in sorted(names):
        cfg = load_config(os.path.join(CONFIGS, f"{name}.yaml"))
        assert cfg.data.name == name.split("/")[0], name


CROSS_DOMAIN = glob.glob(os.path.join(CONFIGS, "cross_domain", "*.yaml"))


@pytest.mark.parametrize("path", sorted(CROSS_DOMAIN), ids=os.path.basename)
def test_cross_domain_config_trains_and_tests_what_its_name_says(path):
    """``<train>[-<train>]_to_<target>[-<target>].yaml``: trained on the sources with their ES-Net recipe, tested on
    the sources first (the primary test set decides model_best.pth, so no target number picks the checkpoint), then
    on the targets."""
    sources, targets = (part.split("-") for part in os.path.basename(path)[:-5].split("_to_"))
    cfg = load_config(path)
    assert [e.name for e in cfg.train_sets()] == sources and cfg.data.name == sources[0]
    assert [e.name for e in cfg.test_sets()] == sources + targets and not set(sources) & set(targets)
    recipe = load_config(os.path.join(CONFIGS, sources[0], "esnet.yaml"))
    assert cfg.model == recipe.model and cfg.solver == recipe.solver
    assert cfg.output_dir == f"outputs/cross_domain/{os.path.basename(path)[:-5]}"


def test_the_cross_domain_workflows_have_configs():
    names = {os.path.basename(p)[:-5] for p in CROSS_DOMAIN}
    assert {"market1501_to_dukemtmcreid", "dukemtmcreid_to_market1501", "msmt17_to_market1501-dukemtmcreid",
            "market1501-dukemtmcreid_to_msmt17"} <= names


def test_sweep_specs_resolve():
    fig4, fig6 = load_sweep("fig4_erase_ratio", CONFIGS), load_sweep("fig6_batch_composition", CONFIGS)
    assert [s for s in fig4.series] == [("ESB", "esnet_esb_only"), ("AIB+ESB", "esnet")]
    assert [p.x for p in fig4.points] == [0, 5, 10, 15, 20, 25, 30, 35, 40]  # Fig. 4: R from 0 to 40 %
    for p in fig4.points:
        ((key, val),) = (o.split("=") for o in p.overrides)
        assert key == "model.erase_ratio" and float(val) == pytest.approx(p.x / 100)
    for p in fig6.points:  # Fig. 6: J x K = 64 at every point
        j, k = (int(o.split("=")[1]) for o in p.overrides)
        assert j * k == 64 and k == p.x
    for sweep in (fig4, fig6):
        for _, config in sweep.series:
            for p in sweep.points:
                load_config(os.path.join(CONFIGS, sweep.folder, f"{config}.yaml"), list(p.overrides))


def docs_results():
    """The printed values of docs/methods.md §1.9, per table: one list of numbers (None for a dash) per row."""
    with open(os.path.join(ROOT, "docs", "methods.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("### §1.9 "):text.index("## §2 ")]
    out = {}
    for block in section.split("**Table ")[1:]:
        name = block.split("**")[0]
        lines = [ln for ln in block.splitlines() if ln.startswith("|")][2:]  # skip header and rule
        rows = []
        for ln in lines:
            cells = [c.strip().strip("*") for c in ln.strip("|").split("|")][1:]
            if name in ("VIII", "IX"):
                cells = cells[1:]  # the backbone column
            rows.append([None if c == "–" else float(c) for c in cells])
        out[name] = rows
    return out


def test_paper_numbers_are_those_of_the_method_notes():
    docs = docs_results()
    assert list(docs) == list(TABLES)
    for name, table in TABLES.items():
        ours = [[v for c in table.columns for v in row.values[c.key]] for row in table.rows]
        assert ours == docs[name], f"Table {name}"


def test_readme_states_the_erasing_values_the_esb_configs_use():
    """README's Configs table says, for each ESB-alone config and each kind of dataset, the R / P its configs use."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        row = next(line for line in f if line.startswith("| `esnet_esb_only`"))
    what = row.split("|")[2]
    stated = {}
    for config, text in re.findall(r"`(esnet_esb_only\w*)` ([^`]*)", what):
        for r, p, kind in re.findall(r"R = (\d+)% / P = ([\d.]+)(?: on (persons|vehicles))?", text):
            for k in [kind] if kind else ["persons", "vehicles"]:
                stated[(config, k)] = (int(r) / 100, float(p))
    used = {}
    for d, c in CHECKED:
        if c.startswith("esnet_esb_only"):
            m = load_config(os.path.join(CONFIGS, d, f"{c}.yaml")).model
            kind = "vehicles" if d in VEHICLES else "persons"
            assert used.setdefault((c, kind), (m.erase_ratio, m.erase_prob)) == (m.erase_ratio, m.erase_prob), d
    assert set(used) <= set(stated) and {k: stated[k] for k in used} == used  # (config, kind): (R, P)
