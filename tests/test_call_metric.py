"""The worker's call metric lines (pure logic; the real worker writes them in tests/test_worker_live.py)."""

from __future__ import annotations

import io
import json
import time

import pytest

from contract.metrics import dimensions
from contract.settings import SettingsError, WorkerSettings
from worker.call_metric import CallGauge


def test_a_line_is_cloudwatch_embedded_metric_format_under_the_services_dimensions() -> None:
    gauge = CallGauge(dimensions("voice", "siphon-prod-support"), capacity=8, clock=lambda: 1700000000.5)
    gauge.observe(2)
    rec = json.loads(gauge.line())
    directive = rec["_aws"]["CloudWatchMetrics"][0]
    assert rec["_aws"]["Timestamp"] == 1700000000500
    assert directive["Namespace"] == "Siphon"
    assert directive["Dimensions"] == [["ClusterName", "ServiceName"]]
    assert {m["Name"]: m["Unit"] for m in directive["Metrics"]} == {
        "CallUtilization": "Percent",
        "ActiveCalls": "Count",
    }
    assert (rec["ClusterName"], rec["ServiceName"]) == ("voice", "siphon-prod-support")
    assert (rec["CallUtilization"], rec["ActiveCalls"], rec["Capacity"]) == (25.0, 2, 8)


def test_utilisation_is_the_intervals_peak_so_a_burst_between_lines_counts() -> None:
    gauge = CallGauge(dimensions("c", "s"), capacity=4)
    for n in (1, 4, 2):
        gauge.observe(n)
    first = json.loads(gauge.line())
    assert (first["CallUtilization"], first["ActiveCalls"]) == (100.0, 2)
    second = json.loads(gauge.line())
    assert second["CallUtilization"] == 50.0, "the next interval starts from the current count"


def test_the_thread_writes_one_line_per_interval_until_stopped() -> None:
    out = io.StringIO()
    gauge = CallGauge(dimensions("c", "s"), capacity=2, interval=0.05, out=out)
    gauge.start()
    time.sleep(0.3)
    gauge.stop()
    lines = out.getvalue().splitlines()
    assert 3 <= len(lines) <= 8
    assert all(json.loads(x)["ServiceName"] == "s" for x in lines)


def test_only_an_ecs_deployment_with_a_capacity_gets_a_gauge() -> None:
    assert CallGauge.for_deployment("voice", "svc", 4, 15) is not None
    assert CallGauge.for_deployment(None, None, 4, 15) is None
    assert CallGauge.for_deployment("voice", "svc", None, 15) is None


@pytest.mark.parametrize(
    ("raw", "says"), [("soon", "valid number"), ("0.2", "greater than or equal to 1"), ("600", "less")]
)
def test_a_bad_interval_stops_the_worker_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, raw: str, says: str
) -> None:
    monkeypatch.setenv("SIPHON_METRIC_INTERVAL", raw)
    with pytest.raises(SettingsError, match=f"SIPHON_METRIC_INTERVAL: .*{says}.*expected: seconds between call-metric"):
        WorkerSettings.from_env()
