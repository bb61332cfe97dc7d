"""Visualisation: shared image helpers and CG-RAM overlays (images.py), rank grids (ranklist.py), CMC and training
curves (plots.py), self-contained HTML reports and comparison pages (report.py), explained ranked lists
(explain.py: ``esreid explain`` / ``visualize``) and the report of a run (runreport.py)."""
