"""Layer after layer: every layer scored on the inputs of the model whose earlier layers are pruned.

Wanda's procedure ("after pruning a preceding layer, the subsequent layer receives updated input
activations"): the layers are visited in forward order (module order), each one's input norms
``‖X_j‖₂`` are measured on the model as it is then, and the layer is pruned before the next one is
measured. The inputs come from a :class:`~fcpts.core.replay.Replay` of the calibration batches, as
SparseGPT's Gram matrices do, and padding tokens are left out (:func:`~.activations.real_tokens`).

Layers that read the very same input tensor (the query, key and value of an attention block; the
branches of an Inception block) cannot change each other's inputs: that tensor exists before any
of them runs. One pass measures all of them, and stops at the first call of a hooked layer that
reads another tensor; on a BERT block that is 4 passes for its 6 Linear layers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import FcptsError
from .activations import _Inputs, real_tokens
from .calibration import Calibration
from .grouped_input import GroupedInput
from .importance import get_importance
from .replay import Replay, StopForward, run_until_stop
from .scoring import allocation_counts, apply_flags, count_flags, pattern_flags, pattern_of, zeros_first


@torch.no_grad()
def prune_in_order(
    model: nn.Module, layers: dict[str, nn.Module], calibration: Calibration, config: Any, per_row: bool = True
) -> None:
    """Prune ``layers`` one after the other, each by ``config.importance`` on the already-pruned model.

    The zeros per layer are :func:`~.scoring.allocation_counts`' (a non-uniform allocation, e.g.
    OWL, reads the dense model's scores once), per output row (``per_row``) or per layer; with
    ``config.pattern`` N:M instead, as :func:`~.scoring.prune_flags`.
    """
    entry = get_importance(config.importance)
    pattern = pattern_of(config)
    counts: dict[str, int] = {}
    if pattern is None:
        counts = dict(zip(layers, allocation_counts(model, layers, calibration, config), strict=True))
    replay = Replay(model, calibration.epoch)
    names = list(layers)
    while names:
        norms = shared_norms(model, names, replay) if entry.needs_inputs else {names[0]: None}
        for name, norm in norms.items():  # the layers of one pass: their inputs do not depend on each other
            module = layers[name]
            score = zeros_first([entry.score(module.weight.detach(), norm)], {name: module})[0]
            if pattern is not None:
                flags = pattern_flags([score], *pattern)[0]
            else:
                flags = count_flags(score, counts[name], per_row)
            apply_flags({name: module}, [flags])
        names = names[len(norms) :]


@torch.no_grad()
def shared_norms(model: nn.Module, names: list[str], replay: Replay) -> dict[str, torch.Tensor]:
    """``‖X_j‖₂`` of ``names[0]`` and of the layers after it that read the same input tensor, on ``model`` now.

    The result holds the longest run ``names[:k]`` whose layers read ``names[0]``'s input on every
    batch ((cols,) each, (groups, cols) for a grouped conv; real tokens only), summed as
    :func:`~.activations.input_norms` sums: on an unpruned model the same values, bit for bit.
    """
    feeds = replay.feeds(names[0])  # before the hooks: moving the replay's cache runs forwards of its own
    squares: dict[str, torch.Tensor] = {}
    calls = dict.fromkeys(names, 0)  # batches on which each layer read names[0]'s input
    state: dict[str, Any] = {"input": None, "seen": set(), "record": False}  # of the batch being run

    def gate(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if name == names[0]:
                if state["input"] is not None:
                    raise StopForward  # a second call of the first layer: its pass is over
                state["input"] = args[0]
            elif state["input"] is None:
                state["record"] = False  # called before the first layer: measured in a pass of its own
                return
            elif args[0] is not state["input"]:
                raise StopForward  # another tensor: it may depend on the layers measured so far
            state["record"] = name not in state["seen"]  # a layer's first call of the batch only
            state["seen"].add(name)

        return hook

    def sink(name: str, x: torch.Tensor | GroupedInput) -> None:
        if state["record"]:
            sq = x.squares() if isinstance(x, GroupedInput) else (x * x).sum(0)  # (cols,); (groups, cols) grouped
            squares[name] = squares[name] + sq if name in squares else sq

    modules = {name: model.get_submodule(name) for name in names}
    gates = [m.register_forward_pre_hook(gate(n)) for n, m in modules.items()]  # run before _Inputs' hooks
    tap = _Inputs(modules, sink)
    batches = 0
    try:
        for root, x, _, _, batch in feeds:
            state["input"], state["seen"], batches = None, set(), batches + 1
            tap.tokens = real_tokens(batch)
            run_until_stop(root, x)
            for name in state["seen"]:
                calls[name] += 1
    finally:
        tap.close()
        for handle in gates:
            handle.remove()
    if batches == 0 or calls[names[0]] != batches:
        raise FcptsError(f"layer {names[0]!r} was never called on the calibration data")
    run = []
    for name in names:
        if calls[name] != batches:
            break
        run.append(name)
    return {name: squares[name].sqrt() for name in run}
