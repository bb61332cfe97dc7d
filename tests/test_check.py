"""`datasets check`: discovery under a root, summaries, published-count mismatches, layout errors."""

import os

from esreid.data.check import check_main


def test_check_finds_and_summarises(tmp_path, capsys, layouts):
    layouts.make_market(str(tmp_path))
    layouts.make_vehicleid(str(tmp_path), "vehicleid")
    assert check_main(str(tmp_path), verify_counts=False) == 0
    out = capsys.readouterr().out
    assert "--- market1501\n=> market1501 loaded" in out
    assert "  train    |     3 |        4 |         4" in out
    assert all(f"--- vehicleid test_size={n}" in out for n in (800, 1600, 2400))
    assert "dukemtmcreid" not in out and "msmt17" not in out and "MISMATCH" not in out

    assert check_main(str(tmp_path), verify_counts=True) == 1
    out = capsys.readouterr().out
    assert "MISMATCH with the published counts: train: expected 751 ids / 12936 images, found 3 / 4" in out


def test_check_reports_broken_layouts_and_empty_roots(tmp_path, capsys, layouts):
    layouts.make_layout(str(tmp_path), "DukeMTMC-reID/DukeMTMC-reID", layouts.DUKE)  # extracted one level too deep
    assert check_main(str(tmp_path), verify_counts=False) == 1
    out = capsys.readouterr().out
    assert "--- dukemtmcreid\n  ERROR: DukeMTMC-reID: no 'bounding_box_train'" in out
    assert "found DukeMTMC-reID/DukeMTMC-reID - the zip was extracted one level too deep" in out
    os.makedirs(tmp_path / "empty")
    assert check_main(str(tmp_path / "empty"), verify_counts=False) == 1
    assert "no known dataset under" in capsys.readouterr().out


def test_missing_root_is_named(tmp_path, capsys):
    from esreid.data.check import check_main

    assert check_main(str(tmp_path / "nope"), False) == 1
    assert f"{tmp_path / 'nope'} is not a folder" in capsys.readouterr().out
