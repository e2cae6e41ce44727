"""The worker's call metric lines (pure logic; the real worker writes them in tests/test_worker_live.py)."""

from __future__ import annotations

import io
import json
import time

import pytest

from worker.call_metric import CallGauge, dimensions


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
    env = {"SIPHON_METRIC_CLUSTER": "voice", "SIPHON_METRIC_SERVICE": "svc"}
    assert CallGauge.from_env(env, 4) is not None
    assert CallGauge.from_env({}, 4) is None
    assert CallGauge.from_env(env, None) is None


@pytest.mark.parametrize(("raw", "says"), [("soon", "not a number"), ("0.2", "outside 1..60"), ("600", "outside")])
def test_a_bad_interval_is_refused_at_start_naming_the_variable(raw: str, says: str) -> None:
    env = {"SIPHON_METRIC_CLUSTER": "voice", "SIPHON_METRIC_SERVICE": "svc", "SIPHON_METRIC_INTERVAL": raw}
    with pytest.raises(ValueError, match=f"SIPHON_METRIC_INTERVAL.*{says}"):
        CallGauge.from_env(env, 4)
