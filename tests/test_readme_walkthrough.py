"""The README's "Your own data" walkthrough, run as written on generated images in the custom layout: its config block
is saved under the name its first line gives, every command of its bash block runs (exit status 0), and its Python
block gives the features `esreid extract --images` wrote. README and test cannot drift: the test reads the README."""

from __future__ import annotations

import os
import re
import shlex

import numpy as np
import pytest

from esreid.cli import main

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
SECTION = "## Your own data"


def walkthrough():
    """The fenced blocks of the section, as (language, text), in order."""
    text = open(README, encoding="utf-8").read()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start:] if end < 0 else text[start:end]
    return re.findall(r"^```(\w+)\n(.*?)^```", section, flags=re.M | re.S)


def test_the_walkthrough_has_a_config_commands_and_python():
    kinds = [kind for kind, _ in walkthrough()]
    assert kinds.count("yaml") == 1 and kinds.count("bash") == 1 and kinds.count("python") == 1


@pytest.mark.slow
def test_the_walkthrough_runs_as_written(tmp_path, monkeypatch, people, capsys):
    blocks = walkthrough()
    (config,) = [text for kind, text in blocks if kind == "yaml"]
    (commands,) = [text for kind, text in blocks if kind == "bash"]
    (python,) = [text for kind, text in blocks if kind == "python"]
    monkeypatch.chdir(tmp_path)
    name = re.match(r"# (\S+\.yaml):", config).group(1)  # "Save this config as ..."
    (tmp_path / name).write_text(config)
    people.write(tmp_path / "data" / "my_people", train_ids=8, test_ids=6, images=2, ext=".jpg")
    for i in range(3):  # photos/: "any folder of new images (sub-folders included)"
        folder = tmp_path / "photos" / ("street" if i else "")
        folder.mkdir(parents=True, exist_ok=True)
        people.image(101 + i, 1000 + i).save(folder / f"photo{i}.jpg")
    lines = [shlex.split(line, comments=True) for line in commands.splitlines()]
    lines = [argv for argv in lines if argv]
    assert len(lines) >= 6 and all(argv[0] == "esreid" for argv in lines)
    for argv in lines:
        assert main(argv[1:]) == 0, " ".join(argv)
    out = capsys.readouterr().out
    assert "eval: mAP" in out
    for made in ("outputs/my_people/last.pth", "gallery.npz", "query.npz", "top5.csv", "top5.html", "photos.npz",
                 "photos_top5/index.html", "outputs/my_people/report.html", "outputs/my_people/log.txt",
                 "outputs/my_people/explain/index.html", "why/index.html"):
        assert os.path.isfile(made), made
    namespace = {}
    exec(compile(python, "README.md (Python block)", "exec"), namespace)
    with np.load("photos.npz") as f:
        assert [os.path.relpath(p) for p in f["paths"]] == ["photos/photo0.jpg", "photos/street/photo1.jpg",
                                                             "photos/street/photo2.jpg"]
        np.testing.assert_array_equal(namespace["feats"].numpy(), f["feats"])
