"""Each product's evaluation against the virtual truth, registered by product name: a command run with
``--evaluate`` (``refresh``, ``product NAME``) calls the evaluation of every product it made.

An evaluation is ``evaluate(ctx, truth, made) -> entries``: ``ctx`` the run's context (its ``year``, ``url()``,
``options()``), ``truth`` a :class:`~geoplantnet.evaluation.truth.VirtualTruth`, ``made`` what the run made by
product name (:class:`~geoplantnet.products.base.Made`, its own included); the entries are merged into the run
summary's ``evaluation``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from geoplantnet.products.base import Made

Evaluation = Callable[[Any, Any, Mapping[str, Made]], dict[str, Any]]

# The package's evaluation modules, imported when an evaluation is asked for (each registers its own)
BUILTIN = ("geoplantnet.evaluation.changes",)

_EVALUATIONS: dict[str, Evaluation] = {}


def register_evaluation(product: str, evaluate: Evaluation) -> Evaluation:
    """Register ``evaluate`` as the evaluation of ``product`` (again: replaced)."""
    _EVALUATIONS[product] = evaluate
    return evaluate


def unregister_evaluation(product: str) -> None:
    """Remove the evaluation of ``product`` (one registered for a test)."""
    _EVALUATIONS.pop(product, None)


def evaluation_of(product: str) -> Evaluation | None:
    """The evaluation registered for ``product`` (None: the product has none)."""
    for module in BUILTIN:
        importlib.import_module(module)
    return _EVALUATIONS.get(product)


def evaluate(ctx: Any, truth: Any, made: Mapping[str, Made]) -> dict[str, Any]:
    """Every evaluation of the products ``made`` mapped (in their order), merged."""
    out: dict[str, Any] = {}
    for name, m in made.items():
        fn = evaluation_of(name)
        if fn is not None and m.run is not None:
            out.update(fn(ctx, truth, made))
    return out
