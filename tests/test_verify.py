"""`siphon-infra verify` without a bridge, and the synthetic call it places (the calls themselves: test_local_calls)."""

from __future__ import annotations

import os
import subprocess
import sys

from infra.sipp import scenario


def test_verify_without_a_sip_bridge_says_what_to_set() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SIPHON_SIP_ADDRESS"}
    run = subprocess.run([sys.executable, "-m", "infra.cli", "verify", "local"], env=env, capture_output=True,
                         text=True, timeout=60, check=False)  # fmt: skip
    assert run.returncode == 2
    assert "SIPHON_SIP_ADDRESS" in run.stderr


def test_the_synthetic_call_carries_caller_headers_sdp_and_hangs_up_with_bye() -> None:
    xml = scenario("+15005550006", {"X-Customer-Tier": "gold"}, hold_ms=1234)
    assert "From: <sip:15005550006@[local_ip]:[local_port]>" in xml
    assert "X-Customer-Tier: gold\nContent-Type: application/sdp" in xml
    assert "m=audio [media_port] RTP/AVP 0" in xml
    assert '<recv request="BYE" timeout="1234" ontimeout="hangup"/>' in xml
    assert "BYE sip:[service]" in xml and "[authentication" not in xml


def test_credentials_go_into_the_scenario_file_only_when_a_trunk_needs_them() -> None:
    xml = scenario("+15005550006", auth=("partner", "s3cret"))
    assert '<recv response="401" optional="true" auth="true" next="auth"/>' in xml
    assert "[authentication username=partner password=s3cret]" in xml
    assert "CSeq: 2 INVITE" in xml and "CSeq: 3 BYE" in xml


def test_call_refuses_a_malformed_override_before_reading_any_stack_output(capsys) -> None:
    from infra import cli

    assert cli.main(["call", "local", "reminders", "+15550100999", "--set", "greeting_instructions"]) == 2
    assert "expected KEY=VALUE, got 'greeting_instructions'" in capsys.readouterr().err
