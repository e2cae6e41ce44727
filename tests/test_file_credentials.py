"""Credentials the plugins read as files (``contract.models.FILE_CREDENTIALS``) are given as the file's text, as ECS
injects a secret, and the worker writes them to a private file at start (``write_file_credentials``, called by
``worker.main.start_up``) before it builds a model or starts a job process. The same start-up in the image, with
no network: ``tests/test_worker_image.py``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from contract.models import FILE_CREDENTIALS, PROVIDERS, CredentialError, write_file_credentials

REPO = Path(__file__).resolve().parents[1]
VARIABLE = "GOOGLE_APPLICATION_CREDENTIALS"
EMAIL = "dummy@siphon-dummy.iam.gserviceaccount.com"


def service_account_text() -> str:
    """A service account key file's JSON text with a fresh RSA key (google.auth parses it offline; no account)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return json.dumps({"type": "service_account", "project_id": "siphon-dummy", "private_key_id": "0" * 40,
                       "private_key": key.decode(), "client_email": EMAIL, "client_id": "1",
                       "token_uri": "https://oauth2.googleapis.com/token"}, indent=2)  # fmt: skip


@pytest.fixture(scope="module")
def key_text() -> str:
    return service_account_text()


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where ``tempfile.mkdtemp`` makes its directories during the test (seen, and removed with the test)."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_every_file_credential_is_a_credential_variable_of_the_provider_registry() -> None:
    variables = {v for providers in PROVIDERS.values() for entry in providers.values() for v in entry.env}
    assert FILE_CREDENTIALS and FILE_CREDENTIALS - variables == set()


def test_a_key_files_text_is_written_to_a_file_only_its_owner_can_read_and_the_variable_points_at_it(
    key_text: str, temp_root: Path
) -> None:
    environ = {VARIABLE: key_text, "OTHER": "kept"}
    written = write_file_credentials(environ)
    path = Path(environ[VARIABLE])
    assert written == {VARIABLE: str(path)}
    assert path.read_text() == key_text
    assert path.parent.parent == temp_root and environ["OTHER"] == "kept"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_uid == os.getuid()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_the_file_is_private_even_under_a_umask_that_lets_everyone_read(key_text: str, temp_root: Path) -> None:
    old = os.umask(0)
    try:
        environ = {VARIABLE: key_text}
        write_file_credentials(environ)
    finally:
        os.umask(old)
    assert stat.S_IMODE(Path(environ[VARIABLE]).stat().st_mode) == 0o600


def test_a_path_to_an_existing_file_is_left_as_it_is(key_text: str, temp_root: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "key.json"
    key_file.write_text(key_text)
    environ = {VARIABLE: str(key_file)}
    assert write_file_credentials(environ) == {}
    assert environ == {VARIABLE: str(key_file)} and list(temp_root.iterdir()) == []


@pytest.mark.parametrize("environ", [{}, {VARIABLE: ""}], ids=["unset", "empty"])
def test_an_unset_or_empty_variable_is_left_alone_and_nothing_is_written(
    environ: dict[str, str], temp_root: Path
) -> None:
    before = dict(environ)
    assert write_file_credentials(environ) == {}
    assert environ == before and list(temp_root.iterdir()) == []


@pytest.mark.parametrize(
    "value",
    ["/run/secrets/no-such-key.json", "not json {secret-ish-value}", '"a JSON string, not a key file"', "[1, 2]"],
    ids=["missing-path", "not-json", "json-string", "json-list"],
)
def test_a_value_neither_an_existing_file_nor_a_key_files_json_is_refused_naming_the_variable_and_what_to_give(
    value: str, temp_root: Path
) -> None:
    environ = {VARIABLE: value}
    with pytest.raises(CredentialError) as refused:
        write_file_credentials(environ)
    message = str(refused.value)
    assert message.startswith(f"{VARIABLE}: ") and "pulumi config set --secret googleCredentials" in message
    assert value not in message
    assert environ == {VARIABLE: value} and list(temp_root.iterdir()) == []


def test_google_auth_loads_the_service_account_from_the_written_file_as_the_plugins_do(
    key_text: str, temp_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Google STT's constructor, and both plugins' clients when given no credential, call ``google.auth.default``,
    which reads the variable as a path."""
    import google.auth

    monkeypatch.setenv(VARIABLE, key_text)
    write_file_credentials(os.environ)
    credentials, project = google.auth.default()
    assert (credentials.service_account_email, project) == (EMAIL, "siphon-dummy")


# The worker's own start-up (worker.main.start_up) in a fresh process, outside `local` with Google STT and TTS as its
# default models; then a process from a forkserver started afterwards (how livekit-agents starts job processes on
# Linux: AgentServer's multiprocessing context) reads the variable and loads the credential.
START_UP = r"""
import json, multiprocessing, os, sys

VARIABLE = "GOOGLE_APPLICATION_CREDENTIALS"


def job_process(queue):
    import google.auth

    credentials, _ = google.auth.default()
    queue.put({"path": os.environ[VARIABLE], "email": credentials.service_account_email})


if __name__ == "__main__":
    from worker.main import start_up

    given = os.environ[VARIABLE]
    settings, plugins = start_up()
    path = os.environ[VARIABLE]
    with open(path) as f:
        same = f.read() == given
    context = multiprocessing.get_context("forkserver")
    queue = context.Queue()
    child = context.Process(target=job_process, args=(queue,))
    child.start()
    seen = queue.get(timeout=60)
    child.join(timeout=30)
    print(json.dumps({"path": path, "same_text": same, "plugins": plugins, "job_process": seen}))
"""


def _run(args: list[str], env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("SIPHON_") and not k.endswith("_API_KEY")}
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=180,
                          check=False, env={**keep, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp), **env})  # fmt: skip


@pytest.fixture(scope="module")
def started(key_text: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    where = tmp_path_factory.mktemp("start-up")
    script, tmp = where / "start_up.py", where / "tmp"
    script.write_text(START_UP)
    tmp.mkdir()
    env = {VARIABLE: key_text, "SIPHON_ENVIRONMENT": "prod", "SIPHON_DEFAULT_LLM": "openai/gpt-4.1-mini",
           "SIPHON_DEFAULT_STT": "google", "SIPHON_DEFAULT_TTS": "google", "OPENAI_API_KEY": "sk-dummy"}  # fmt: skip
    run = _run([str(script)], env, tmp)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert key_text not in run.stdout + run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1]), tmp


def test_the_workers_start_up_writes_the_text_before_it_builds_google_stt_and_tts_from_it(
    started: tuple[dict[str, Any], Path],
) -> None:
    report, tmp = started
    assert Path(report["path"]).parent.parent == tmp and report["same_text"] is True
    assert report["plugins"] == ["livekit.plugins.google", "livekit.plugins.openai"]


def test_a_job_process_from_a_forkserver_started_after_the_start_up_reads_the_same_file(
    started: tuple[dict[str, Any], Path],
) -> None:
    report, _ = started
    assert report["job_process"] == {"path": report["path"], "email": EMAIL}


def test_the_written_file_and_its_directory_are_removed_when_the_worker_exits(
    started: tuple[dict[str, Any], Path],
) -> None:
    report, _ = started
    assert not Path(report["path"]).parent.exists()


def test_the_worker_given_neither_a_file_nor_a_key_files_text_stops_at_start_without_printing_the_value(
    tmp_path: Path,
) -> None:
    value = "sk-live-pasted-by-mistake-0123456789"
    env = {VARIABLE: value, "SIPHON_ENVIRONMENT": "prod", "LIVEKIT_URL": "ws://127.0.0.1:9"}
    run = _run(["-m", "worker.main", "start"], env, tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"invalid worker settings:\n  {VARIABLE}: " in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert "pulumi config set --secret googleCredentials" in run.stderr
    assert value not in run.stdout + run.stderr
