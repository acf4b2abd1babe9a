"""The one error type of the serving layer: an HTTP status, a stable code and a message.

Raised anywhere a request can fail because of its input or of a model's state (decoding, the
stage catalog, model loading in a replica) and turned into a JSON body by the ingress::

    {"error": {"code": "unknown_stage", "message": "...", "valid_stages": [1, 2, 3]}}

It crosses process boundaries (a model replica raises it, the ingress answers with it), so its
constructor arguments are exactly its ``args`` and it pickles without a custom reducer.
"""

from __future__ import annotations

from typing import Any, Optional


class RequestError(Exception):
    """A request that cannot be served, with the HTTP status that says why.

    Args:
        status: HTTP status code (4xx for bad input, 503 for a model or registry that is down).
        code: short machine-readable reason (``empty_body``, ``unknown_stage`` ...).
        message: one human-readable sentence naming what is wrong.
        details: extra JSON-safe fields for the error body (e.g. ``valid_stages``).
    """

    def __init__(self, status: int, code: str, message: str, details: Optional[dict[str, Any]] = None) -> None:
        super().__init__(status, code, message, details)
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        """The response body."""
        return {"error": {"code": self.code, "message": self.message, **self.details}}


def root_cause(exc: BaseException) -> BaseException:
    """The user exception inside a Ray task error (``RayTaskError.cause``), else ``exc`` itself.

    Ray re-raises a replica's exception as a ``RayTaskError`` that also subclasses the original
    type but formats itself as a traceback; the original carries the clean message.
    """
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc
