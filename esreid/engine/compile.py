"""Regional compilation (``solver.compile: true``) and placing a model for training or inference.

``torch.compile`` of a whole re-ID model breaks its graph at every dynamic step (ES-Net's easiest-positive choice and
``autograd.grad`` to layer L, BESM's top-k, Batch DropBlock's region draw, Hard-Mix partners) and recompiles on the
way; compiled ES-Net was 16x slower than eager. Instead each region the model declares
(:meth:`~esreid.models.base.ReIDModel.compile_regions`: trunk stages, heads) is compiled on its own, in place, and
everything between regions stays eager. In place means the module tree, its state-dict keys, hooks registered on the
model and checkpoints are unchanged; only calling a region runs its graph.

Each region gets a function with its own code object: dynamo keeps compiled graphs, guards and its recompile limit
per code object, so regions of the same class (two ``nn.Sequential`` stage ranges, two heads) neither share one cache
nor exhaust one limit. A region is compiled again only when what it was traced for changes: train / eval mode, grad
mode, a new batch size (the first change makes the batch dimension dynamic) or memory format. One training step and
one evaluation (the warm-up) see every variant; after that nothing recompiles (tests/test_compile.py counts).

Forward hooks on a region's inner modules (CG-RAM's layer capture) are run under ``torch.compiler.set_stance(
"force_eager")`` by the code registering them (:func:`esreid.erasing.cgram.capture_layer`).
"""

from __future__ import annotations

import types
from typing import Any, Callable, List

import torch
from torch import nn


def _region_call(module: nn.Module, name: str) -> Callable[..., Any]:
    """``module``'s ``_call_impl`` (hooks + forward) behind a function with its own code object named ``name``.

    ``nn.Module.compile`` would compile ``_call_impl`` itself, a frame dynamo skips (it then compiles each block
    below it separately, all on one code object); a plain function frame makes the whole region one graph."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return module._call_impl(*args, **kwargs)

    code = call.__code__.replace(co_name=name)
    return types.FunctionType(code, call.__globals__, name, None, call.__closure__)


def compile_model(model: nn.Module, **options: Any) -> List[str]:
    """Compile each of ``model.compile_regions()`` in place (``options`` go to ``torch.compile``, e.g.
    ``backend="aot_eager"``); returns the regions' module names. Calling a region then runs its compiled graph;
    ``model.state_dict()`` and the module tree are unchanged."""
    names = {module: name for name, module in model.named_modules()}
    compiled = []
    for module in model.compile_regions():
        name = names[module]
        module._compiled_call_impl = torch.compile(_region_call(module, name.replace(".", "_")), **options)
        compiled.append(name)
    return compiled


def place_model(model: nn.Module, solver: Any, device: torch.device) -> nn.Module:
    """``model`` on ``device``, in channels_last memory format when ``solver.channels_last``, its regions compiled
    when ``solver.compile``: the same preparation for training (the trainer) and inference (eval, extract)."""
    model = model.to(device)
    if solver.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if solver.compile:
        compile_model(model)
    return model
