"""Routing: which category shards each query is matched against.

- ``label``: the caller gives the category (the study's baseline);
- ``svm``: the router's top category (the study's improvement);
- ``svm-fallback``: the top category, or the top two when the router's top probability is
  below ``threshold`` (so one wrong route no longer makes every result wrong);
- ``none``: the whole catalogue.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from shared.errors import InvalidInput, UnknownCategory

RoutingMode = Literal["label", "svm", "svm-fallback", "none"]
ROUTING_MODES: tuple[str, ...] = get_args(RoutingMode)


def check_mode(mode: str) -> RoutingMode:
    if mode not in ROUTING_MODES:
        raise InvalidInput(f"unknown routing mode {mode!r} (expected one of {', '.join(ROUTING_MODES)})")
    return mode  # type: ignore[return-value]


def plan_routes(
    mode: str,
    n_queries: int,
    labels: Sequence[str] | None = None,
    probabilities: npt.NDArray[np.floating] | None = None,
    given: Sequence[str | None] | None = None,
    threshold: float = 0.6,
    known: Sequence[str] | None = None,
) -> list[tuple[str, ...] | None]:
    """One route (a tuple of categories, or ``None`` for everything) per query."""
    mode = check_mode(mode)
    if mode == "none":
        return [None] * n_queries
    if mode == "label":
        if given is None or len(given) != n_queries or any(g is None for g in given):
            raise InvalidInput("routing 'label' needs the category of every query")
        if known is not None:
            for g in given:
                if g not in known:
                    raise UnknownCategory(f"unknown category {g!r} (known: {', '.join(known)})")
        return [(str(g),) for g in given]
    if labels is None or probabilities is None:
        raise InvalidInput(f"routing {mode!r} needs a trained router")
    probs = np.asarray(probabilities)
    if probs.shape != (n_queries, len(labels)):
        raise InvalidInput(f"router probabilities have shape {probs.shape}, expected {(n_queries, len(labels))}")
    order = np.argsort(-probs, axis=1)
    routes: list[tuple[str, ...] | None] = []
    for i in range(n_queries):
        top = order[i]
        if mode == "svm-fallback" and len(labels) > 1 and probs[i, top[0]] < threshold:
            routes.append((labels[top[0]], labels[top[1]]))
        else:
            routes.append((labels[top[0]],))
    return routes
