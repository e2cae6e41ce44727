"""The worker's call load as a CloudWatch metric, the signal ECS scales agent workers on.

An ECS deployment sets ``SIPHON_METRIC_CLUSTER`` and ``SIPHON_METRIC_SERVICE``; the worker then writes, every
``SIPHON_METRIC_INTERVAL`` seconds (default 15), one line of CloudWatch Embedded Metric Format (EMF) to stdout.
The container's ``awslogs`` driver sends it to the deployment's log group, where CloudWatch turns it into
metrics in the ``Siphon`` namespace, dimensions ``ClusterName`` and ``ServiceName``:

- ``CallUtilization`` (Percent): the most calls the worker held at once during the interval, as a share of
  its capacity (``max_calls``). The service's target-tracking policy keeps its average across tasks at the
  declared ``calls_target_percent`` (``infra.ecs.operations.ensure_autoscaling``).
- ``ActiveCalls`` (Count): calls held at the time of the line.
- ``ModelFallbacks`` and ``CallsRefused`` (Count): one line per event, written by the call's job when a model a
  layer asks for cannot be built and the agent's default answers instead, or when not even the default can be
  built and the call is refused (``event_line``). Sum them to see how often it happens.
- ``CallerOverridesDropped`` (Count): one line per call whose caller-sourced layer (the SIP participant's
  ``siphon.overrides`` attribute) named what it may not set (a provider's host, URL or credential, or a choice the
  route's ``allowed_overrides`` does not list), valued at how many were dropped (``contract.resolve.caller_layer``).

No AWS call and no credentials: writing a log line is all it costs. The names (``contract.metrics``) are the ones
the scaling policy reads: ``infra`` imports them from there too, so the two cannot disagree.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TextIO

from contract.deployment import DEFAULT_METRIC_INTERVAL
from contract.metrics import ACTIVE, NAMESPACE, UTILIZATION, dimensions


def _directive(dims: Mapping[str, str], at_ms: int, metrics: list[dict[str, str]]) -> dict[str, object]:
    return {
        "Timestamp": at_ms,
        "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [sorted(dims)], "Metrics": metrics}],
    }


def emf_record(dims: Mapping[str, str], *, active: int, peak: int, capacity: int, at_ms: int) -> dict[str, object]:
    """One EMF log record: utilisation from the interval's peak, the current count, under ``dims``."""
    return {
        "_aws": _directive(dims, at_ms, [{"Name": UTILIZATION, "Unit": "Percent"}, {"Name": ACTIVE, "Unit": "Count"}]),
        **dims,
        UTILIZATION: round(100.0 * peak / capacity, 2),
        ACTIVE: active,
        "Capacity": capacity,
    }


class CallGauge:
    """Tracks the worker's running calls and writes them as an EMF line every interval (a daemon thread).

    ``observe`` is called with the current count whenever the worker computes its load (livekit-agents does so
    every few seconds, and the capacity gate on every job request); the line carries the interval's peak, so a
    burst between two lines still counts.
    """

    def __init__(
        self,
        dims: Mapping[str, str],
        capacity: int,
        interval: float = DEFAULT_METRIC_INTERVAL,
        out: TextIO | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dims = dict(dims)
        self._capacity = capacity
        self._interval = interval
        self._out = out
        self._clock = clock
        self._lock = threading.Lock()
        self._active = 0
        self._peak = 0
        self._stop = threading.Event()

    @classmethod
    def for_deployment(
        cls, cluster: str | None, service: str | None, capacity: int | None, interval: float
    ) -> CallGauge | None:
        """The gauge an ECS deployment asks for (``SIPHON_METRIC_CLUSTER`` and ``_SERVICE`` set, and a capacity),
        else None. The worker's settings (``contract.settings.WorkerSettings``) read and check the variables."""
        if not (cluster and service and capacity):
            return None
        return cls(dimensions(cluster, service), capacity, interval)

    def observe(self, active: int) -> None:
        """Record the worker's current number of running calls."""
        with self._lock:
            self._active = active
            self._peak = max(self._peak, active)

    def line(self) -> str:
        """The EMF line for the interval that ends now; the next interval's peak starts at the current count."""
        with self._lock:
            active, peak = self._active, self._peak
            self._peak = active
        record = emf_record(
            self._dims, active=active, peak=peak, capacity=self._capacity, at_ms=int(self._clock() * 1000)
        )
        return json.dumps(record, separators=(",", ":"))

    def start(self) -> None:
        """Write a line now and then every interval, until ``stop``."""
        threading.Thread(target=self._run, name="siphon-call-metric", daemon=True).start()

    def stop(self) -> None:
        """Stop writing lines."""
        self._stop.set()

    def _run(self) -> None:
        while True:
            out = self._out or sys.stdout
            try:
                out.write(self.line() + "\n")
                out.flush()
            except (OSError, ValueError):  # stdout closed at exit
                return
            if self._stop.wait(self._interval):
                return


def event_line(
    cluster: str | None, service: str | None, metric: str, at_ms: int | None = None, count: int = 1
) -> str | None:
    """One EMF line counting ``count`` events (``FALLBACKS``, ``REFUSALS``, ``CALLER_DROPS``) for an ECS deployment's
    worker, or None outside a deployment (no ``SIPHON_METRIC_CLUSTER`` / ``_SERVICE``): the reason is in the log
    either way."""
    if not (cluster and service):
        return None
    dims = dimensions(cluster, service)
    at_ms = int(time.time() * 1000) if at_ms is None else at_ms
    record = {"_aws": _directive(dims, at_ms, [{"Name": metric, "Unit": "Count"}]), **dims, metric: count}
    return json.dumps(record, separators=(",", ":"))
