"""What the Serve ingress records for every detection request.

``serve/app.py`` decorates each detection route with :func:`observed`, which runs the route
inside :meth:`ServingMetrics.request`; the ingress reports the stage once it is resolved
(:func:`observe_stage`), and a returned detection carries the verdict.
When the body ends the request is counted by route, stage and HTTP status (requests/s in
Grafana is ``rate()`` of that counter), its latency goes into a histogram, an error is counted
by its code, and a verdict by label (fake rate = fake / all) with its probability.

Stages are tag values only once resolved against the registry (``stage`` is then a registered
stage number): a request naming a stage that does not exist is tagged ``unresolved``, so no
client input ever becomes a new time series.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterator, Mapping, Optional

from forgesweep.observability.metrics import MetricRecorder
from forgesweep.serve.errors import RequestError

UNRESOLVED = "unresolved"

# The request the current asyncio task is handling: routes run as one task each, so code deep
# in the ingress (stage resolution) can report to its own request without passing it along.
_CURRENT: contextvars.ContextVar[Optional["RequestObservation"]] = contextvars.ContextVar(
    "forgesweep_request", default=None)


@dataclass
class RequestObservation:
    """What a route learns about its request while handling it."""

    route: str
    stage: Optional[int] = None
    fake_probability: Optional[float] = None
    label: Optional[str] = None

    def verdict(self, fake_probability: Any, label: Any) -> None:
        """The answer the request gets (``label`` is ``fake`` or ``real``); checked when recorded."""
        self.fake_probability, self.label = fake_probability, label


class ServingMetrics:
    """The serving metrics of one ingress replica.

    Args:
        app: the Serve application name (tag ``app``).
        recorder: where values go (default: Ray's metrics through :class:`MetricRecorder`).
        clock: seconds, for the latency (tests pass a fake).
    """

    def __init__(self, app: str, recorder: Optional[MetricRecorder] = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.app = app
        self.recorder = recorder or MetricRecorder()
        self.clock = clock

    @contextlib.contextmanager
    def request(self, route: str) -> Iterator[RequestObservation]:
        """Observe one request; its outcome is recorded when the block ends.

        A :class:`RequestError` is recorded with its status and code, any other exception as
        500 ``internal_error``; both propagate unchanged. A cancelled request (the client went
        away) is not counted: it got no answer.
        """
        obs = RequestObservation(route)
        began = self.clock()
        try:
            yield obs
        except RequestError as exc:
            self._finish(obs, began, exc.status, exc.code)
            raise
        except Exception:
            self._finish(obs, began, 500, "internal_error")
            raise
        self._finish(obs, began, 200, None)

    def _finish(self, obs: RequestObservation, began: float, status: int, code: Optional[str]) -> None:
        rec = self.recorder
        stage = str(obs.stage) if obs.stage is not None else UNRESOLVED
        tags = {"app": self.app, "route": obs.route, "stage": stage}
        rec.inc("forgesweep_serve_requests_total", 1, {**tags, "status": str(status)})
        rec.observe("forgesweep_serve_request_latency_ms", (self.clock() - began) * 1000.0, tags)
        if code is not None:
            rec.inc("forgesweep_serve_errors_total", 1, {**tags, "code": code})
        if obs.label is not None and obs.fake_probability is not None:
            # The recorder checks the values (a non-number is logged once, never raised).
            rec.inc("forgesweep_serve_predictions_total", 1,
                    {"app": self.app, "stage": stage, "label": str(obs.label)})
            rec.observe("forgesweep_serve_fake_probability", obs.fake_probability, {"app": self.app, "stage": stage})


def observe_stage(stage: int) -> None:
    """Tell the request this task is handling (if any) the stage it resolved to."""
    obs = _CURRENT.get()
    if obs is not None:
        obs.stage = stage


def observed(route: str) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Decorator for an async route method of a class with a ``metrics`` :class:`ServingMetrics`.

    The route runs inside ``self.metrics.request(route)``; a returned mapping with
    ``fake_probability`` and ``label`` is the request's verdict. ``functools.wraps`` keeps the
    route's name and signature, which FastAPI and Serve's class-based views read. Put it
    below ``@api.post(...)``.
    """

    def decorate(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def route_with_metrics(self: Any, *args: Any, **kwargs: Any) -> Any:
            return await _run_observed(route, method, self, args, kwargs)

        return route_with_metrics

    return decorate


async def _run_observed(route: str, method: Callable[..., Awaitable[Any]], owner: Any, args: tuple,
                        kwargs: dict) -> Any:
    # A module-level function, not part of the closure above: Serve pickles the FastAPI app with
    # its routes, and a closure is pickled with the globals it names (a ContextVar cannot be).
    with owner.metrics.request(route) as obs:
        token = _CURRENT.set(obs)
        try:
            result = await method(owner, *args, **kwargs)
        finally:
            _CURRENT.reset(token)
        if isinstance(result, Mapping) and "fake_probability" in result and "label" in result:
            obs.verdict(result["fake_probability"], result["label"])
        return result
