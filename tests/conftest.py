"""Session-wide local environment (one set of real servers per test run) and per-test resets."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from localenv import engine
from localenv.manager import Endpoints, LocalEnv

if TYPE_CHECKING:
    from bench.sip_deploy import Calls


@pytest.fixture(scope="session")
def local_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnv]:
    """Redis, livekit-server, livekit-sip and moto, started once per session (a missing tool fails the run).

    Their endpoints are exported to os.environ for the whole session, so every client and every
    process the tests start (the Pulumi CLI and its provider plugins included) reaches them.
    """
    env = LocalEnv.start(tmp_path_factory.mktemp("localenv"))
    assert env.endpoints is not None
    saved = {k: os.environ.get(k) for k in env.endpoints.env()}
    os.environ.update(env.endpoints.env())
    try:
        yield env
    finally:
        env.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def endpoints(local_env: LocalEnv) -> Endpoints:
    """Endpoints of the shared environment; fails the test if a service has died."""
    local_env.check_alive()
    assert local_env.endpoints is not None
    return local_env.endpoints


@pytest.fixture
def aws(local_env: LocalEnv) -> Iterator[Endpoints]:
    """The moto server, emptied after the test."""
    assert local_env.endpoints is not None
    yield local_env.endpoints
    local_env.reset_aws()


@pytest.fixture
def pulumi_env(tmp_path: Path) -> dict[str, str]:
    """Hermetic engine settings: a fresh file:// backend and PULUMI_HOME per test."""
    return engine.engine_env(tmp_path / "state", secrets.token_urlsafe(16), tmp_path / "pulumi-home")


@pytest.fixture
def clean_livekit(endpoints: Endpoints) -> Iterator[Endpoints]:
    """No SIP trunk or dispatch rule in LiveKit before and after the test."""
    from tests.sip_harness import wipe_livekit

    wipe_livekit()
    yield endpoints
    wipe_livekit()


@pytest.fixture
def livekit_calls(endpoints: Endpoints) -> Iterator[Calls]:
    """LiveKit calls counted by method at a proxy in front of the session's livekit-server: give a process
    ``livekit_calls.env()`` (or a stack file ``livekit_calls.url``), then ``livekit_calls.take()``."""
    from bench.sip_deploy import Calls

    with Calls.start(endpoints.livekit_url) as calls:
        yield calls
