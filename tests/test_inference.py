"""FeatureExtractor and `esreid extract --images` against the evaluator's own features: the same numbers as `esreid
extract --split` for the same files (to the bit), for Pillow images and numpy arrays of them, in the ONNX graph of
`esreid export`; folders, list files and Market names; one-line errors for inputs that cannot be used."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from esreid import FeatureExtractor
from esreid.cli import main
from esreid.config import dump_yaml, load_config
from esreid.engine.checkpoint import save_checkpoint
from esreid.inference import ImageInputError, image_paths
from esreid.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "market1501", "esnet.yaml")  # ES-Net: two branches, flip, per-branch L2


@pytest.fixture(scope="module")
def run(tmp_path_factory, people):
    """Custom data, an ES-Net config on a tiny ResNet, its weights (a bare file and a run folder whose last.pth and
    model_best.pth differ)."""
    tmp = tmp_path_factory.mktemp("inference")
    data = people.write(tmp / "data", train_ids=4, test_ids=4, images=2)
    overrides = ["data.name=custom", f"data.root={data}", "data.height=32", "data.width=16", "data.workers=0",
                 "data.test_batch_size=5", "device=cpu", "model.backbone=resnet_tiny", "model.pretrained=",
                 "model.esb_pooling=ppool"]
    cfg = load_config(CONFIG, overrides)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(build_model(cfg.model, 4, cfg.test).eval())
    weights = str(tmp / "w.pth")
    torch.save(models[0].state_dict(), weights)
    folder = tmp / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text(dump_yaml(cfg))
    for name, model in (("last.pth", models[0]), ("model_best.pth", models[1])):
        save_checkpoint(str(folder / name), model=model, epoch=1, config={}, num_classes=4)
    return tmp, data, overrides, weights, str(folder)


def cli_extract(run, out, *what):
    tmp, _, overrides, weights, _ = run
    assert main(["extract", "--config", CONFIG, "--weights", weights, "--out", str(tmp / out), *what, *overrides]) == 0
    with np.load(tmp / out, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def extractor(run, extra=(), **kwargs):
    _, _, overrides, weights, _ = run
    return FeatureExtractor(CONFIG, weights, overrides=[*overrides, *extra], **kwargs)


def test_equals_esreid_extract_of_a_split(run):
    split = cli_extract(run, "query.npz", "--split", "query")
    feats = extractor(run)(list(split["paths"]))
    assert feats.dtype == torch.float32 and feats.shape == split["feats"].shape
    np.testing.assert_array_equal(feats.numpy(), split["feats"])  # the evaluator's numbers, bit for bit
    batched = extractor(run, batch_size=3)(list(split["paths"]))  # batch boundaries change nothing (eval mode)
    np.testing.assert_allclose(batched.numpy(), split["feats"], atol=1e-6)


def test_images_of_a_folder_or_a_list_file(run):
    tmp, data, *_ = run
    split = cli_extract(run, "gallery.npz", "--split", "gallery")
    row = {p: i for i, p in enumerate(split["paths"])}
    folder = cli_extract(run, "folder.npz", "--images", os.path.join(data, "gallery"))
    assert set(folder) == {"feats", "paths"}  # no pids: the names follow no layout we were told of
    assert list(folder["paths"]) == sorted(split["paths"])  # recursive, sorted by path
    np.testing.assert_array_equal(folder["feats"], split["feats"][[row[p] for p in folder["paths"]]])
    chosen = list(split["paths"][[5, 0, 3]])
    listing = tmp / "lists" / "some.txt"
    listing.parent.mkdir()
    listing.write_text("# three gallery images\n\n" + "\n".join(os.path.relpath(p, listing.parent) for p in chosen))
    listed = cli_extract(run, "listed.npz", "--images", str(listing))
    assert list(listed["paths"]) == chosen  # list order, paths relative to the list's folder
    np.testing.assert_array_equal(listed["feats"], split["feats"][[5, 0, 3]])


def test_pil_images_and_arrays_give_the_features_of_their_files(run):
    _, data, *_ = run
    paths = image_paths(os.path.join(data, "query"))
    ex = extractor(run)
    want = ex(paths).numpy()
    pil = [Image.open(p) for p in paths]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    np.testing.assert_array_equal(ex(pil).numpy(), want)
    np.testing.assert_array_equal(ex(arrays).numpy(), want)  # RGB order and the same bilinear resize
    # other batch compositions: the same up to float rounding of the batched convolutions
    np.testing.assert_allclose(ex([paths[0], pil[1], arrays[2]]).numpy(), want[:3], atol=1e-6)
    np.testing.assert_allclose(ex(arrays[4]).numpy(), want[4:5], atol=1e-6)  # one input -> one row
    np.testing.assert_array_equal(ex(os.path.join(data, "query")).numpy(), want)  # a folder: its images, sorted
    assert not np.allclose(want[0], want[1])  # different images, different features (the comparison can fail)


def test_features_follow_the_retrieval_rule(run):
    # ES-Net's rule: two branches, each L2-normalised; with the flip each branch sums the image and its mirror
    _, data, *_ = run
    image = Image.open(image_paths(os.path.join(data, "query"))[0]).convert("RGB")
    ex = extractor(run)
    assert ex.retrieval.flip and ex.retrieval.normalize
    f = ex(image)[0]
    half = f.shape[0] // 2
    np.testing.assert_allclose([f[:half].norm(), f[half:].norm()], [1, 1], atol=1e-5)
    mirrored = ex(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))[0]
    np.testing.assert_allclose(mirrored.numpy(), f.numpy(), atol=1e-5)  # flip-summed: mirror-invariant
    no_flip = extractor(run, extra=["test.flip=false"])
    assert not np.allclose(no_flip(image)[0].numpy(), no_flip(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))[0])


def test_onnx_graph_fed_the_preprocessed_images_gives_the_features(run):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    tmp, data, overrides, weights, _ = run
    onnx_path = tmp / "m.onnx"
    assert main(["export", "--config", CONFIG, "--weights", weights, "--out", str(onnx_path), "--dynamic-batch",
                 *overrides]) == 0
    paths = image_paths(os.path.join(data, "gallery"))
    ex = extractor(run)
    images = ex.preprocess(paths)
    assert images.shape == (len(paths), 3, 32, 16) and images.dtype == torch.float32
    (feats,) = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
        ["feats"], {"images": images.numpy()})
    np.testing.assert_allclose(feats, ex(paths).numpy(), atol=1e-4)


def test_a_run_folder_reads_model_best_before_last(run):
    tmp, data, overrides, weights, folder = run
    paths = image_paths(os.path.join(data, "query"))[:3]
    from_run = FeatureExtractor(folder, overrides=overrides)
    assert os.path.basename(from_run.weights) == "model_best.pth"
    best = FeatureExtractor(CONFIG, os.path.join(folder, "model_best.pth"), overrides=overrides)(paths)
    np.testing.assert_array_equal(from_run(paths).numpy(), best.numpy())
    last = FeatureExtractor(folder, os.path.join(folder, "last.pth"), overrides=overrides)(paths)
    np.testing.assert_array_equal(last.numpy(), extractor(run)(paths).numpy())  # last.pth = the seed-0 weights
    assert not np.allclose(last.numpy(), best.numpy())


def test_market_names_give_pids_and_cameras(run, tmp_path, capsys):
    _, data, overrides, weights, _ = run
    sources = image_paths(os.path.join(data, "query"))[:3]
    names = ["0002_c1s1_000451_03.png", "0002_c5s1_000401_01.png", "0007_c6s3_076594_00.png"]
    for src, name in zip(sources, names):
        Image.open(src).save(tmp_path / name)
    out = tmp_path / "m.npz"
    argv = ["extract", "--config", CONFIG, "--weights", weights, "--images", str(tmp_path), "--names", "market",
            "--out", str(out), *overrides]
    assert main(argv) == 0
    with np.load(out) as f:
        assert [os.path.basename(p) for p in f["paths"]] == names
        np.testing.assert_array_equal(f["ids"], [2, 2, 7])
        np.testing.assert_array_equal(f["camids"], [0, 4, 5])  # 1-based in the name, 0-based stored (as loaders)
    Image.open(sources[0]).save(tmp_path / "holiday.png")
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holiday.png" in err and "market" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_image_is_named_in_one_line(run, tmp_path, capsys, workers):
    _, data, overrides, weights, _ = run
    for i, src in enumerate(image_paths(os.path.join(data, "query"))[:4]):
        Image.open(src).save(tmp_path / f"{i}.png")
    (tmp_path / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    argv = ["extract", "--config", CONFIG, "--weights", weights, "--images", str(tmp_path), "--out",
            str(tmp_path / "x.npz"), *overrides, f"data.workers={workers}", "data.test_batch_size=2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2.png" in err and "Traceback" not in err and "worker" not in err
    assert not (tmp_path / "x.npz").exists()


def test_inputs_that_cannot_be_used(run, tmp_path):
    _, data, overrides, weights, folder = run
    ex = extractor(run)
    with pytest.raises(ImageInputError, match=r"input 1: .*\(H, W, 3\).*float32"):
        ex([np.zeros((8, 4, 3), np.uint8), np.zeros((8, 4, 3), np.float32)])
    with pytest.raises(ImageInputError, match=r"input 0: .*\(4, 4\)"):
        ex(np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageInputError, match="nowhere.png not found"):
        ex([str(tmp_path / "nowhere.png")])
    with pytest.raises(ImageInputError, match="is a folder"):
        ex([os.path.join(data, "query")])
    with pytest.raises(ImageInputError, match="input 0: expected an image file path"):
        ex([42])
    with pytest.raises(ImageInputError, match="no images given"):
        ex([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageInputError, match="no images"):
        ex(str(tmp_path / "empty"))
    (tmp_path / "l.txt").write_text("a.png\n\nmissing/b.png\n")
    with pytest.raises(ImageInputError, match=r"l.txt line 1: image not found: a.png \(2 listed files missing"):
        image_paths(str(tmp_path / "l.txt"))
    with pytest.raises(Exception, match="needs its trained weights"):
        FeatureExtractor(CONFIG, overrides=overrides)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(open(os.path.join(folder, "config.yaml")).read())
    with pytest.raises(Exception, match="no model_best.pth or last.pth"):
        FeatureExtractor(str(tmp_path / "run"))


def test_cli_usage_errors_stop_before_any_work(run, tmp_path, capsys):
    _, data, overrides, weights, _ = run
    base = ["extract", "--config", CONFIG, "--weights", weights]
    for argv, expected in [
        (base + ["--images", data, "--out", str(tmp_path / "x.json")], "ending in .npz"),
        (base + ["--images", str(tmp_path / "nope"), "--out", str(tmp_path / "x.npz")], "no such folder or file"),
        (base + ["--images", data, "--names", "dukemtmc", "--out", str(tmp_path / "x.npz")], "expected one of market"),
        (base + ["--split", "query", "--names", "market", "--out", str(tmp_path / "x.npz")], "--names"),
        (base + ["--split", "query", "--images", data, "--out", str(tmp_path / "x.npz")], "not allowed with"),
    ]:
        assert main([*argv, *overrides]) == 2, argv
        assert expected in capsys.readouterr().err


def test_import_esreid_stays_light():
    code = ("import sys, esreid; assert 'torch' not in sys.modules, 'torch imported'; "
            "from esreid import FeatureExtractor; print(json.dumps(FeatureExtractor.__module__))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == "esreid.inference"
