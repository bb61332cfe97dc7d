"""Visualisation, drawing only (arrays and records in, pictures out; nothing here imports esreid.engine): shared
image helpers and CG-RAM overlays (images.py), rank grids (ranklist.py), CMC and training curves (plots.py),
self-contained HTML reports and comparison pages (report.py), explained ranked lists (explain.py: the records
:mod:`esreid.engine.explain` fills for ``esreid explain`` / ``visualize``), the report of a run (runreport.py) and
search results (matches.py)."""
