"""Test-wide settings: one intra-op thread (tiny tensors run fastest that way and results are reproducible)."""

import torch

torch.set_num_threads(1)
