"""Visualisation: CG-RAM overlays of (query, gallery) pairs (saliency.py)."""
