"""Every command line of the README, as a user runs it from a second terminal of `./dev local`.

The module deploys the repository's `local` stack onto the session's local environment exactly as `./dev local` does
(``localenv.deploy``: the same project, state in the run folder, its local workers), writes the env file `./dev local`
writes, and runs each README command in a clean shell (``env -i``) holding only a home, a basic ``PATH`` and what
that file exports, from the repository root. Each command must end as the table says. Commands that cannot run here
are listed with the reason; a README command in neither table fails the test, so every new one gets classified.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from localenv.deploy import LATEST_LINK, deploy, start_stack_workers, write_env_file
from localenv.manager import LocalEnv
from localenv.reset import wipe_sip
from tests.stack_harness import REPO

pytestmark = pytest.mark.engine
README = REPO / "README.md"
PREFIXES = ("uv run ", "siphon-infra", "pulumi ", "./dev", "source ", "SIPHON_SIP_ADDRESS=")
SOURCE_LINE = f"source {LATEST_LINK.relative_to(REPO)}/env.sh"


@dataclass(frozen=True)
class Expect:
    """How a command ends when it works as the README says."""

    code: int = 0
    says: str = ""  # a piece of its output (stdout and stderr)


RUNS: dict[str, Expect] = {
    SOURCE_LINE: Expect(),
    "uv run siphon-infra validate local": Expect(0, "local.yaml: ok"),
    "uv run siphon-infra routes prod --mermaid": Expect(0, "```mermaid"),
    "uv run siphon-infra verify local": Expect(0, "+15550100100"),
    "uv run siphon-infra call local reminders +15550100999 --call-id appt-7": Expect(0, '"room": "call-appt-7"'),
    'uv run siphon-infra call local reminders +15550100999 --call-id appt-42 --set greeting_instructions="Hi Sam"':
        Expect(0, '"room": "call-appt-42"'),
    "pulumi stack output routing_table": Expect(0, "+15550100100"),
    "pulumi preview --diff": Expect(0, "local"),
    "pulumi preview": Expect(0, "local"),
    "pulumi refresh": Expect(0, "local"),
    "pulumi up": Expect(0, "local"),
    "siphon-infra validate": Expect(1, "Pulumi.prod.yaml does not set"),  # dev and prod are templates: keys to set
    "./dev setup": Expect(0, "[setup]"),
    "./dev": Expect(2, "./dev local"),  # named as the entry point: alone, it prints its commands
}  # fmt: skip

NOT_HERE: dict[str, str] = {
    "./dev local": "starts the local environment: this module runs against the session's (tests/test_localenv.py "
                   "starts `localenv.cli up` itself)",
    "uv run python -m localenv.cli up": "the same as `./dev local`",
    "./dev test": "runs the suite this test is part of",
    "./dev image": "builds the worker image: tests/test_worker_image.py builds and runs it",
    "./dev rehearse <env>": "a template; its forms for dev and prod run in tests/test_rehearse.py",
    "./dev rehearse dev": "starts a throwaway environment of its own: tests/test_rehearse.py runs it",
    "uv run siphon-infra summary prod --preview preview.json": "needs `pulumi preview --json` of prod, whose cloud "
                                                              "is not reachable here (the summary is tested offline)",
    "pulumi config set --secret livekit:apiSecret ...": "a template for a real environment's secret",
    "pulumi config set --secret carrierInboundPassword ...": "a template for a real environment's secret",
    "pulumi config set --secret <key> <value> --stack <env>": "a template (placeholders)",
    'pulumi config set --secret googleCredentials "$(cat key.json)" --stack <env>':
        "a template for a real environment's secret (a Google key file); tests/test_file_credentials.py gives the "
        "worker such a file's text",
    "pulumi stack init <env>": "a template (placeholders)",
    "pulumi up &": "the pitfall the README warns about, not a command to run",
    "uv run python -m bench.sip_deploy [N ...]": "a benchmark of several minutes (bench/, not a test)",
    "uv run python -m bench.turn_latency [--calls 2] [--turns 12]":
        "a benchmark of several minutes (bench/, not a test); it reads the loopback interface raw (root)",
    "uv run python -m bench.api_budget [--quick] [--old-ref REF] [--new-ref REF]":
        "a benchmark of several minutes (bench/, not a test); localenv/api_proxy.py has tests/test_api_proxy.py",
    "SIPHON_SIP_ADDRESS=<livekit-sip host:port> uv run siphon-infra verify local [--route R]":
        "a template; its form for the local stack, `uv run siphon-infra verify local`, is run",
    "siphon-infra verify": "the command's name in prose; its runnable form is run",
    "siphon-infra call": "the command's name in prose; its runnable forms are run",
    "siphon-infra import": "the command's name in prose",
    "siphon-infra": "the command's name in prose",
    "uv run siphon-infra import prod --url wss://voice.example.com": "imports a real project (the example URL); "
        "tests/test_import_*.py import objects made on the local server",
    "pulumi import": "named to say it does not work for dynamic providers",
    "uv run python -m bench.import_scale [N]": "a benchmark (bench/, not a test); template",
}  # fmt: skip


def readme_commands() -> list[str]:
    """Command lines of the README's code blocks (fenced or indented), and inline code that is a command, in order,
    once each."""
    text = README.read_text()
    found: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()  # a trailing comment explains the command
            if command.startswith(PREFIXES):
                found.append(command)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [line.strip() for line in re.findall(r"^    (\S.*)$", prose, re.M) if line.strip().startswith(PREFIXES)]
    found += [span for span in re.findall(r"`([^`\n]+)`", prose) if span.startswith(PREFIXES)]
    return list(dict.fromkeys(found))


@pytest.fixture(scope="module")
def second_terminal(local_env: LocalEnv) -> Iterator[Path]:
    """The local stack deployed and its workers running, as after `./dev local`; the env file it writes."""
    from infra.stack.load import load, stack_path

    wipe_sip()
    deploy(local_env)
    stack, _ = load(stack_path("local"))
    workers = start_stack_workers(local_env, stack)  # as `./dev local` runs them
    try:
        yield write_env_file(local_env)
    finally:
        for w in workers:
            local_env.release(w, grace=30)
        subprocess.run(["pulumi", "destroy", "--yes", "--stack", "local"], cwd=REPO, capture_output=True,
                       env=_shell_env(write_env_file(local_env)), timeout=300, check=False)  # fmt: skip
        local_env.reset_aws()
        wipe_sip()


def _shell_env(env_file: Path) -> dict[str, str]:
    """What a new terminal has, plus what the env file exports (read by a shell, as `source` does)."""
    base = {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    dump = subprocess.run(["bash", "-c", f"source {env_file} && env -0"], env=base, capture_output=True,
                          check=True).stdout.decode()  # fmt: skip
    return dict(item.split("=", 1) for item in dump.split("\0") if "=" in item)


def test_every_readme_command_is_run_here_or_says_why_not() -> None:
    commands = readme_commands()
    assert len(commands) >= 20, commands
    unclassified = [c for c in commands if c not in RUNS and c not in NOT_HERE]
    assert unclassified == [], "classify each new README command in RUNS or NOT_HERE"
    stale = [c for c in [*RUNS, *NOT_HERE] if c not in commands]
    assert stale == [], "these commands are no longer in the README"


@pytest.mark.parametrize("command", list(RUNS))
def test_the_readme_command_works_from_a_second_terminal(second_terminal: Path, command: str) -> None:
    expect = RUNS[command]
    script = command.replace(SOURCE_LINE, f"source {second_terminal}")  # this session's run folder
    base = {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    started = time.monotonic()
    run = subprocess.run(["bash", "-c", f"source {second_terminal} && {script}"], cwd=REPO, env=base,
                         capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == expect.code, f"{command} ({time.monotonic() - started:.1f}s):\n{output[-3000:]}"
    assert expect.says in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]


@pytest.mark.parametrize(
    ("command", "says"),
    [
        ("siphon-infra call local reminders +15550100999", "the Pulumi CLI is not on PATH"),
        ("siphon-infra verify local", "the Pulumi CLI is not on PATH"),
        ("siphon-infra summary local --preview nothing-here.json", "cannot read nothing-here.json"),
    ],
)
def test_without_the_env_file_the_cli_says_in_one_line_what_is_missing(command: str, says: str) -> None:
    env = {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/bin:/bin", "SIPHON_SIP_ADDRESS": "127.0.0.1:9"}
    run = subprocess.run([str(REPO / ".venv" / "bin" / command.split()[0]), *command.split()[1:]], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert run.returncode != 0
    assert run.stdout == "" and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert says in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_without_a_backend_the_cli_names_the_login_to_run(tmp_path: Path) -> None:
    from localenv import tools

    path = os.pathsep.join([*(str(p) for p in tools.bin_dirs()), "/usr/bin", "/bin"])
    env = {"HOME": str(tmp_path), "PATH": path}
    run = subprocess.run([str(REPO / ".venv" / "bin" / "siphon-infra"), "call", "local", "reminders", "+15550100999"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "no Pulumi backend is set: `pulumi login" in run.stderr and "env.sh" in run.stderr, run.stderr
