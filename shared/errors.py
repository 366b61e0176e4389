"""Domain errors. The API maps each to an HTTP status and a stable ``code``; the CLI prints
its message and exits non-zero."""

from __future__ import annotations


class FirError(Exception):
    """Base of every error FIR reports to a user."""

    code = "fir_error"
    http_status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadImage(FirError):
    """An image that cannot be decoded safely (corrupt, truncated, too large, not an image)."""

    code = "bad_image"
    http_status = 422

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class ImageTooLarge(BadImage):
    code = "image_too_large"
    http_status = 413


class NotFound(FirError):
    code = "not_found"
    http_status = 404


class InvalidInput(FirError):
    code = "invalid_input"
    http_status = 400


class EmptyDataset(FirError):
    code = "empty_dataset"
    http_status = 422


class UnknownCategory(FirError):
    code = "unknown_category"
    http_status = 422


class ModelMismatch(FirError):
    """An artifact (router, feature set) built on one model used beside another."""

    code = "model_mismatch"
    http_status = 409


class WeightsUnavailable(FirError):
    code = "weights_unavailable"
    http_status = 503


class Conflict(FirError):
    code = "conflict"
    http_status = 409


class InvalidTransition(FirError):
    """A state change that the state machine forbids (a job, a model version)."""

    code = "invalid_transition"
    http_status = 409
