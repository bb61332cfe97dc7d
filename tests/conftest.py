"""Test-wide settings: one intra-op thread (tiny tensors run fastest that way and results are reproducible).

Fixture ``chromium``: a headless browser driven over the DevTools pipe (tests/chromium.py); the test is skipped, with
the reason, where no Chromium is installed (``bash scripts/setup.sh`` installs Debian's as root).
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def chromium(tmp_path_factory):
    from chromium import NAMES, Chromium, find_chromium

    binary = find_chromium()
    if binary is None:
        pytest.skip(f"no Chromium on PATH (looked for {', '.join(NAMES)}); bash scripts/setup.sh installs it as root")
    folder = tmp_path_factory.mktemp("chromium")
    with Chromium(binary, str(folder / "profile"), str(folder / "browser.log")) as browser:
        yield browser
