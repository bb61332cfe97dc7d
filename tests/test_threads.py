"""The thread rule (esreid/engine/threads.py): OMP_NUM_THREADS first, else the cores left free by loader workers and
other processes, at least 1; every command applies the config's ``threads`` before its work."""

import time

import pytest
import torch

from esreid.cli import UsageError, parse_args
from esreid.config import load_config
from esreid.engine.threads import auto_threads, busy_cores, resolve_threads
from esreid.engine.trainer import Trainer
from esreid.errors import ConfigError


@pytest.mark.parametrize("cores, workers, busy, environ, want", [
    (8, 0, 0.1, {}, 8),  # an idle machine: every core
    (8, 2, 0.1, {}, 6),  # each loader worker keeps a core
    (8, 2, 3.4, {}, 5),  # three cores busy elsewhere (rounded load): they are not free either
    (2, 0, 1.2, {}, 1),  # a busy loop on a 2-core machine
    (2, 4, 7.0, {}, 1),  # never fewer than one
    (8, 2, 0.1, {"OMP_NUM_THREADS": "3"}, 3),  # the user / launcher decided
    (8, 2, 0.1, {"OMP_NUM_THREADS": "x"}, 6),  # not a number: ignored, as the OpenMP runtime does
])
def test_auto_rule(cores, workers, busy, environ, want):
    assert auto_threads(workers, cores=cores, busy=busy, environ=environ) == want


def spin(stop):
    while not stop.is_set():
        pass


def test_busy_cores_sees_another_busy_process():
    import multiprocessing as mp

    stop = mp.Event()
    spinner = mp.Process(target=spin, args=(stop,), daemon=True)
    spinner.start()
    try:
        time.sleep(0.2)  # the spinner is running
        assert busy_cores() >= 0.8
    finally:
        stop.set()
        spinner.join()


def test_explicit_setting_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert resolve_threads(3, workers=2) == 3
    assert resolve_threads("auto", workers=2) == 1


@pytest.fixture
def restore_threads():
    yield
    torch.set_num_threads(1)  # the suite's setting (conftest)


def test_trainer_applies_the_config(tiny_config, restore_threads):
    Trainer(tiny_config(extra=["threads=2"]), progress=False, log=lambda s: None)
    assert torch.get_num_threads() == 2
    Trainer(tiny_config(out="b"), progress=False, log=lambda s: None)  # auto; conftest sets OMP_NUM_THREADS=1
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("value, message", [("0", "expected a value >= 1, got 0"),
                                            ("many", "expected one of auto; got 'many'"),
                                            ("2.5", "expected an integer, got 2.5")])
def test_bad_thread_settings_are_config_errors(value, message):
    with pytest.raises(ConfigError, match=rf"command line: key 'threads': {message}"):
        load_config(None, [f"threads={value}"])


def test_demo_threads_option():
    assert parse_args(["demo", "--threads", "3"]).threads == "3"
    assert parse_args(["demo"]).threads == "auto"
    with pytest.raises(UsageError, match="expected a positive integer, got '0'"):
        parse_args(["demo", "--threads", "0"])
