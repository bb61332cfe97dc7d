"""Visualisation, as pure functions of data: CG-RAM overlays (saliency.py, shared helpers in images.py), rank grids
(ranklist.py), CMC and training curves (plots.py), self-contained HTML reports and comparison pages (report.py)."""
