"""Evaluation as in the study: AP, mAP@k, precision@k, router accuracy and query time per
routing mode, and the report (markdown table, JSON, example grid)."""

from shared.evaluation.evaluate import (
    EvalExample,
    EvalReport,
    EvalRow,
    ExampleResult,
    evaluate_retrieval,
)
from shared.evaluation.metrics import (
    average_precision_at_k,
    average_precision_at_k_batch,
    mean_average_precision,
    mean_precision,
    precision_at_k,
    precision_at_k_batch,
    relevance_from_indices,
)

__all__ = [
    "EvalExample",
    "EvalReport",
    "EvalRow",
    "ExampleResult",
    "average_precision_at_k",
    "average_precision_at_k_batch",
    "evaluate_retrieval",
    "mean_average_precision",
    "mean_precision",
    "precision_at_k",
    "precision_at_k_batch",
    "relevance_from_indices",
]
