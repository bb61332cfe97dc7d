"""``esreid explain`` / ``visualize``: ranked lists equal to the evaluator's ranking (order and printed scores), CG-RAM
maps of the batched pairs equal to the pair-by-pair definition, every registered model, a BatchNorm layer, the
two-model comparison and the ``--where`` selections against brute-force rank-1, queries from files, and the user
errors (one line, exit 2, before any work)."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from esreid.cli import main
from esreid.config import dump_yaml, to_dict
from esreid.data.base import build_dataset
from esreid.engine.checkpoint import save_checkpoint
from esreid.engine.evaluator import extract_items
from esreid.engine.explain import Explainer, dataset_queries
from esreid.erasing.cgram import cgram_pair
from esreid.evaluation.distance import pairwise_distance
from esreid.models import MODELS, build_model

NUM_CLASSES = 4
# 192x64: every model's defaults are valid (12x4 layer4 map); 6 test ids x 5 images at 96x32, resized by the loader
DATA = ['data.args={"num_train_ids": 4, "num_test_ids": 6, "images_per_id": 5, "height": 96, "width": 32}',
        "data.height=192", "data.width=64", "data.test_batch_size=16"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One synthetic dataset for the module (generated on first use under ``<root>/data``)."""
    return tmp_path_factory.mktemp("explain")


@pytest.fixture
def trained(tiny_config, shared, tmp_path):
    """``trained(name, seed=0, extra=())`` -> (cfg, config.yaml path, checkpoint path, model): a randomly initialised
    model saved as a checkpoint, with its config written as YAML."""

    def make(name="baseline", seed=0, extra=(), tag=""):
        cfg = tiny_config(name, extra=[*DATA, *extra], root=shared)
        torch.manual_seed(seed)
        model = build_model(cfg.model, NUM_CLASSES, cfg.test).eval()
        folder = tmp_path / f"{name}{seed}{tag}"
        folder.mkdir()
        save_checkpoint(str(folder / "w.pth"), model=model, epoch=1, config=to_dict(cfg), num_classes=NUM_CLASSES)
        (folder / "c.yaml").write_text(dump_yaml(cfg))
        return cfg, str(folder / "c.yaml"), str(folder / "w.pth"), model

    return make


def features(cfg, model, split):
    """The evaluator's features of a split (what esreid eval ranks)."""
    ds = build_dataset(cfg.data.name, cfg.data.root, verbose=False, **cfg.data.args)
    return extract_items(model, getattr(ds, split), cfg, torch.device("cpu"))[0], ds


def brute_ranking(cfg, model, k):
    """Top-k gallery rows and printed scores per query by definition: the evaluator's features, the full distance
    matrix, a stable argsort (ties by gallery row); cosine similarity = 1 - d, or the squared Euclidean distance."""
    qf, ds = features(cfg, model, "query")
    gf, _ = features(cfg, model, "gallery")
    d = pairwise_distance(qf.double(), gf.double(), model.retrieval.metric).numpy()
    rows = np.argsort(d, axis=1, kind="stable")[:, :k]
    dist = np.take_along_axis(d, rows, 1)
    return rows, (1 - dist if model.retrieval.metric == "cosine" else dist), ds


def run_explain(capsys, config, weights, out, *args):
    code = main(["explain", "--config", config, "--weights", weights, "--out", str(out), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("name", MODELS.names())
def test_explain_ranks_as_the_evaluator_for_every_model(trained, tmp_path, capsys, name):
    cfg, config, weights, model = trained(name)
    code, out, err = run_explain(capsys, config, weights, tmp_path / "out", "--query-index", "0", "7", "-k", "4")
    assert code == 0, err
    assert out.count("=> synthetic loaded") == 1
    files = sorted(os.listdir(tmp_path / "out"))
    assert files == ["000_query_0_id_" + files[0].split("_id_")[1], files[1], "index.html", "ranked.json"]
    ranked = json.loads((tmp_path / "out" / "ranked.json").read_text())
    rows, scores, ds = brute_ranking(cfg, model, 4)
    assert [q["index"] for q in ranked["queries"]] == [0, 7]
    for q in ranked["queries"]:
        (matches,) = q["ranked"]
        assert [m["row"] for m in matches] == rows[q["index"]].tolist()
        np.testing.assert_allclose([m["score"] for m in matches], scores[q["index"]], rtol=1e-5, atol=1e-5)
        item = ds.query[q["index"]]
        want = ["junk" if g.pid == item.pid and g.camid == item.camid else "match" if g.pid == item.pid else "false"
                for g in (ds.gallery[r] for r in rows[q["index"]])]
        assert [m["label"] for m in matches] == want
    assert ranked["models"][0]["layer"] == model.saliency_layer
    with Image.open(tmp_path / "out" / files[0]) as img:
        assert img.width > 5 * 64 and img.height > 3 * 128  # query + 4 matches, image row + two CG-RAM strips


@pytest.mark.parametrize("name", ["esnet", "bdb"])  # cosine with flip; Euclidean without
def test_batched_maps_are_the_maps_of_each_pair(trained, name):
    """All (query, match) pairs run in batches of 3 across queries; each pair's maps and similarity must be those of
    cgram_pair on that pair alone, and the similarity the ranked score (a pairing or slicing error fails)."""
    cfg, _, _, model = trained(name)
    qf, ds = features(cfg, model, "query")
    gf, _ = features(cfg, model, "gallery")
    e = Explainer(name, model, cfg, torch.device("cpu"), batch_size=3)
    queries = [dataset_queries(ds)[i] for i in (2, 5)]
    got = e.explain(queries, qf[[2, 5]], ds.gallery, gf, k=4)
    for q, r in zip(queries, got):
        assert r.query_maps.shape[0] == 4 and r.gallery_maps.shape == r.query_maps.shape
        for j, row in enumerate(r.rows):
            images = e.load([q.path, ds.gallery[row].path])
            mq, mg, s = cgram_pair(model, e.transform(images[:1]), e.transform(images[1:]))
            torch.testing.assert_close(r.query_maps[j], mq[0], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(r.gallery_maps[j], mg[0], rtol=1e-4, atol=1e-6)
            shown = float(s[0]) if e.cosine else -float(s[0])
            assert shown == pytest.approx(float(r.scores[j]), rel=1e-4, abs=1e-4)  # float32 sums in another order
        assert (r.query_maps.flatten(1).amax(1) > 0).all()


def test_a_batchnorm_layer_and_no_maps(trained, tmp_path, capsys):
    cfg, config, weights, model = trained("baseline")
    code, out, err = run_explain(capsys, config, weights, tmp_path / "bn", "--query-index", "1", "-k", "3", "--layer",
                                 "backbone.bn1")
    assert code == 0, err
    assert json.loads((tmp_path / "bn" / "ranked.json").read_text())["models"][0]["layer"] == "backbone.bn1"
    qf, ds = features(cfg, model, "query")
    gf, _ = features(cfg, model, "gallery")
    e = Explainer("b", model, cfg, torch.device("cpu"), layer="backbone.bn1")
    (r,) = e.explain([dataset_queries(ds)[1]], qf[[1]], ds.gallery, gf, k=3)
    assert r.query_maps.shape == (3, 96, 32)  # the stem BatchNorm's map: stride 2 at 192x64
    code, _, err = run_explain(capsys, config, weights, tmp_path / "nomaps", "--query-index", "1", "-k", "3",
                               "--no-maps")
    assert code == 0, err
    (png,) = [f for f in os.listdir(tmp_path / "nomaps") if f.endswith(".png")]
    (with_maps,) = [f for f in os.listdir(tmp_path / "bn") if f.endswith(".png")]
    with Image.open(tmp_path / "nomaps" / png) as a, Image.open(tmp_path / "bn" / with_maps) as b:
        assert a.width == b.width and a.height < b.height - 2 * 128  # two CG-RAM strips fewer


def protocol_rank1(cfg, model):
    """Per query, the gallery row R1 counts (first non-junk of the full ranking), and whether it is a false match."""
    rows, _, ds = brute_ranking(cfg, model, None)
    first, wrong = [], []
    for q, row in zip(ds.query, rows):
        valid = [r for r in row if not (ds.gallery[r].pid == q.pid and ds.gallery[r].camid == q.camid)]
        first.append(valid[0])
        wrong.append(ds.gallery[valid[0]].pid != q.pid)
    return np.array(first), np.array(wrong)


def test_compare_where_differ_picks_the_queries_whose_rank1_differs(trained, tmp_path, capsys):
    cfg, config, weights, model_a = trained("baseline", seed=0)
    cfg_b, config_b, weights_b, model_b = trained("esnet", seed=1)
    first_a, wrong_a = protocol_rank1(cfg, model_a)
    first_b, _ = protocol_rank1(cfg_b, model_b)
    differ = np.flatnonzero(first_a != first_b)
    assert 0 < len(differ) < len(first_a)  # the seeds give both kinds of query: the selection is tested
    code, out, err = run_explain(capsys, config, weights, tmp_path / "cmp", "--compare", weights_b,
                                 "--compare-config", config_b, "--where", "differ", "--num-queries", "1000", "-k", "3")
    assert code == 0, err
    ranked = json.loads((tmp_path / "cmp" / "ranked.json").read_text())
    assert [m["name"] for m in ranked["models"]] == ["baseline", "esnet"]
    assert [q["index"] for q in ranked["queries"]] == differ.tolist()
    rows_b, _, _ = brute_ranking(cfg_b, model_b, 3)
    for q in ranked["queries"]:
        assert [m["row"] for m in q["ranked"][1]] == rows_b[q["index"]].tolist()  # the second model's own top-k
    assert len([f for f in os.listdir(tmp_path / "cmp") if f.endswith(".png")]) == len(differ)
    # a draw of 2 of them, reproducible by seed
    code, _, _ = run_explain(capsys, config, weights, tmp_path / "two", "--compare", weights_b, "--compare-config",
                             config_b, "--where", "differ", "--num-queries", "2", "--no-maps")
    picked = [q["index"] for q in json.loads((tmp_path / "two" / "ranked.json").read_text())["queries"]]
    assert code == 0 and len(picked) == 2 and set(picked) <= set(differ.tolist())
    # --where wrong: the first model's R1 is a false match
    code, _, err = run_explain(capsys, config, weights, tmp_path / "wrong", "--where", "wrong", "--num-queries", "1000",
                               "--no-maps", "-k", "2")
    assert code == 0, err
    wrong = [q["index"] for q in json.loads((tmp_path / "wrong" / "ranked.json").read_text())["queries"]]
    assert wrong == np.flatnonzero(wrong_a).tolist()


def test_where_differ_with_twin_models_is_a_user_error(trained, tmp_path, capsys):
    _, config, weights, _ = trained("baseline", seed=0)
    _, _, twin, _ = trained("baseline", seed=0, tag="twin")
    code, out, err = run_explain(capsys, config, weights, tmp_path / "o", "--compare", twin, "--where", "differ")
    assert code == 2 and err.startswith("esreid: error: --where differ: the two models rank the same gallery image")
    assert not os.path.exists(tmp_path / "o")


def test_queries_from_files(trained, tmp_path, capsys):
    """A file of the gallery is labelled with its identity (it ranks itself first: junk, cosine 1); a file from
    outside the dataset has an unknown identity."""
    cfg, config, weights, model = trained("baseline")
    ds = build_dataset(cfg.data.name, cfg.data.root, verbose=False, **cfg.data.args)
    outside = tmp_path / "someone.jpg"
    shutil.copy(ds.query[3].path, outside)
    code, out, err = run_explain(capsys, config, weights, tmp_path / "o", "--query", ds.gallery[4].path, str(outside),
                                 "-k", "3")
    assert code == 0, err
    inside, unknown = json.loads((tmp_path / "o" / "ranked.json").read_text())["queries"]
    assert (inside["pid"], inside["camid"]) == (ds.gallery[4].pid, ds.gallery[4].camid)
    assert inside["ranked"][0][0]["row"] == 4 and inside["ranked"][0][0]["label"] == "junk"
    assert inside["ranked"][0][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert unknown["pid"] is None and {m["label"] for m in unknown["ranked"][0]} == {"neutral"}
    rows, scores, _ = brute_ranking(cfg, model, 3)
    assert [m["row"] for m in unknown["ranked"][0]] == rows[3].tolist()  # the same pixels as query 3
    assert "identity unknown" in out


@pytest.mark.parametrize("args, message", [
    (["--query-index", "99"], "--query-index 99 is out of range: the query split of synthetic has"),
    (["--where", "differ"], "--where differ compares two models: add --compare W2.pth"),
    (["--layer", "backbone.layer9"], "CG-RAM layer 'backbone.layer9' is not a module of Baseline; did you mean"),
    (["--layer", "backbone.layer1.0.relu"], "CG-RAM layer ran 4 times for 2 forward pass(es)"),
    (["--layer", "head.bn"], "CG-RAM layer BatchNorm1d must output a (B, C, h, w) map, got (2, "),
    (["--query-index", "0", "data.height=96"], "argument --query-index: expected a query row, got the override"),
])
def test_user_errors_are_one_line_before_any_work(trained, tmp_path, capsys, args, message):
    _, config, weights, _ = trained("baseline")
    code, out, err = run_explain(capsys, config, weights, tmp_path / "o", *args)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert "features" not in out and not os.path.exists(tmp_path / "o")


def test_visualize_is_the_one_pair_case(trained, tmp_path, capsys):
    cfg, config, weights, model = trained("baseline")
    ds = build_dataset(cfg.data.name, cfg.data.root, verbose=False, **cfg.data.args)
    q, g = ds.query[0].path, ds.gallery[2].path
    out = tmp_path / "why.png"
    assert main(["visualize", "--config", config, "--weights", weights, "--query", q, "--gallery", g, "--out",
                 str(out)]) == 0
    printed = capsys.readouterr().out
    e = Explainer("b", model, cfg, torch.device("cpu"))
    f = model.retrieval_features(e.transform(e.load([q, g]))).detach()
    cos = float(torch.nn.functional.cosine_similarity(f[:1], f[1:]))
    assert f"cosine similarity of the ranked features (flip=True, normalize=True): {cos:.4f}" in printed
    with Image.open(out) as img:
        assert img.width > 2 * 64 and img.height > 3 * 192


def test_explain_ranks_with_the_model_eval_places(trained, tmp_path, capsys, monkeypatch):
    """With solver.channels_last on, explain must rank with the model placed as esreid eval places it (one session
    helper): channels_last weights on cfg.device, and the same gallery features (to 1e-6) and ranking as eval's. A
    model moved with .to(device) (contiguous weights) fails the placement check."""
    import esreid.engine.evaluator as evaluator

    _, config, weights, _ = trained("esnet", extra=["solver.channels_last=true", "device=cpu"])
    seen = {}
    extract = evaluator.extract_features

    def spy(model, loader, device, transform, amp="none", desc="features", channels_last=False):
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        out = extract(model, loader, device, transform, amp, desc, channels_last)
        seen[desc] = (conv.weight.is_contiguous(memory_format=torch.channels_last), str(device), out[0])
        return out

    monkeypatch.setattr(evaluator, "extract_features", spy)
    assert main(["eval", "--config", config, "--weights", weights, "--out", str(tmp_path / "eval")]) == 0
    code, out, err = run_explain(capsys, config, weights, tmp_path / "x", "--query-index", "0", "3", "-k", "5",
                                 "--no-maps")
    assert code == 0, err
    eval_cl, eval_device, eval_gallery = seen["gallery features"]
    explain_cl, explain_device, explain_gallery = seen["esnet: gallery features"]
    assert eval_cl and explain_cl and eval_device == explain_device == "cpu"
    torch.testing.assert_close(explain_gallery, eval_gallery, rtol=0, atol=1e-6)
    qf = seen["query features"][2]
    d = pairwise_distance(qf.double(), eval_gallery.double(), "cosine").numpy()
    rows = np.argsort(d, axis=1, kind="stable")[:, :5]
    ranked = json.loads((tmp_path / "x" / "ranked.json").read_text())
    assert [[m["row"] for m in q["ranked"][0]] for q in ranked["queries"]] == rows[[0, 3]].tolist()
