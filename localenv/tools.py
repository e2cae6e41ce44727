"""Pinned external tools: where they live, whether they are there, and how to build or install them.

Standard library only: this module runs under the machine's ``python3`` before the project's
virtualenv exists (``python3 -m localenv.tools install``), and the environment manager imports it
to find the binaries it starts.

Everything is installed under a cache folder outside the checkout, keyed by version (and, for
binaries built from this repository's Go wrapper module, by a hash of the build inputs), so fresh
clones on the same machine reuse it and nothing is rebuilt unless a pin changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# --- pins (one place; tests assert pyproject.toml, uv.lock and tools/pulumi/go.mod agree) ---------
PULUMI_VERSION = "3.260.0"
LIVEKIT_SERVER_VERSION = "v1.13.5"
LIVEKIT_SIP_VERSION = "v1.10.0"  # v1.11.0 needs a livekit/protocol the proxy does not serve
ACTIONLINT_VERSION = "v1.7.12"  # checks .github/workflows/ in the test run (the workflows never ran on GitHub)
UV_VERSION = "0.13.9"
MIN_GO = (1, 21)  # older Go cannot fetch the go1.26 toolchain the LiveKit and Pulumi modules require

LIVEKIT_SERVER_PKG = "github.com/livekit/livekit-server/cmd/server"
LIVEKIT_SIP_PKG = "github.com/livekit/sip/cmd/livekit-sip"
ACTIONLINT_PKG = "github.com/rhysd/actionlint/cmd/actionlint"
PULUMI_WRAPPER = REPO / "tools" / "pulumi"
LIVEKIT_SIP_WRAPPER = REPO / "tools" / "livekit-sip"
# A GOPROXY-layout folder holding modules the ordinary proxy refuses (livekit-sip, media-sdk).
# Optional: without it (and without ../shared/goproxy) the ordinary proxy must serve them.
GO_MIRROR_ENV = "SIPHON_GO_MIRROR"

DEBIAN_PACKAGES = (
    "redis-server",  # LiveKit SIP state
    "sip-tester",  # sipp: real SIP calls in tests
    "pkg-config",  # livekit-sip (cgo) build
    "libopus-dev",
    "libopusfile-dev",
    "libsoxr-dev",
    "espeak-ng",  # the worker's offline TTS
    "sox",  # caller audio for real calls (espeak-ng speech as 8 kHz mu-law)
    "podman",  # builds and runs the worker image (no Docker engine here)
    "runc",  # podman's runtime here (crun fails on cgroup v1)
    "debootstrap",  # the image's base, made from Debian packages when no registry is reachable
    "shellcheck",  # actionlint checks the workflows' `run:` scripts with it
)


# The worker image's base where no registry is reachable: Debian bookworm (python3 = 3.11, the project's
# Python) from Debian packages, imported into podman. Tagged by a key of these inputs; rebuilt when they change.
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_SOURCES = (
    "deb {mirror} bookworm main",
    "deb {mirror} bookworm-updates main",
    "deb {security} bookworm-security main",
)
DEBIAN_MIRROR_ENV = "SIPHON_DEBIAN_MIRROR"  # default http://deb.debian.org/debian
CONTAINERS_CONF = REPO / "localenv" / "containers.conf"  # podman settings that work here (runc, cgroupfs, no ulimits)


def cache_root() -> Path:
    """The folder holding every built or installed tool (override with SIPHON_CACHE)."""
    if env := os.environ.get("SIPHON_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "siphon-infra"


class ToolError(RuntimeError):
    """A tool is missing and could not be installed; the message says what to install."""


def _digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(REPO)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def _go_inputs(wrapper: Path) -> list[Path]:
    return [p for p in wrapper.rglob("*") if p.is_file() and p.suffix in {".go", ".mod", ".sum"}]


def go_mirror() -> Path | None:
    """The extra Go module mirror: $SIPHON_GO_MIRROR, else ../shared/goproxy beside the checkout."""
    if env := os.environ.get(GO_MIRROR_ENV):
        path = Path(env).resolve()
        if not path.is_dir():
            raise ToolError(f"{GO_MIRROR_ENV}={env} is not a folder (it should hold a GOPROXY-layout module mirror)")
        return path
    default = REPO.parent / "shared" / "goproxy"
    return default if default.is_dir() else None


@dataclass(frozen=True)
class Tool:
    """One pinned tool: its cache folder, the binaries it provides, and how to install it."""

    name: str
    version: str
    binaries: tuple[str, ...]
    key: str = ""

    @property
    def home(self) -> Path:
        """The tool's folder in the cache."""
        suffix = f"-{self.key}" if self.key else ""
        return cache_root() / f"{self.name}-{self.version}{suffix}"

    @property
    def bin_dir(self) -> Path:
        """Where its binaries are."""
        return self.home / "bin"

    def path(self, binary: str | None = None) -> Path:
        """Path of one of its binaries (the first by default)."""
        return self.bin_dir / (binary or self.binaries[0])

    def installed(self) -> bool:
        """True when every binary is present and executable."""
        return all(os.access(self.path(b), os.X_OK) for b in self.binaries)


def uv_tool() -> Tool:
    """The uv package manager, installed from PyPI into the cache."""
    return Tool("uv", UV_VERSION, ("uv",))


def pulumi_tool() -> Tool:
    """Pulumi CLI plus the Python language host and dynamic-provider plugin scripts, in one bin/."""
    return Tool(
        "pulumi",
        PULUMI_VERSION,
        (
            "pulumi",
            "pulumi-language-python",
            "pulumi-language-python-exec",
            "pulumi-resource-pulumi-python",
        ),
        key=_digest(_go_inputs(PULUMI_WRAPPER)),
    )


def livekit_server_tool() -> Tool:
    """livekit-server built from its Go module."""
    return Tool("livekit-server", LIVEKIT_SERVER_VERSION, ("livekit-server",))


def livekit_sip_tool() -> Tool:
    """livekit-sip (the SIP bridge) built with cgo from the wrapper module ``tools/livekit-sip``."""
    return Tool("livekit-sip", LIVEKIT_SIP_VERSION, ("livekit-sip",), key=_digest(_go_inputs(LIVEKIT_SIP_WRAPPER)))


def actionlint_tool() -> Tool:
    """actionlint (the GitHub Actions workflow checker) built from its Go module."""
    return Tool("actionlint", ACTIONLINT_VERSION, ("actionlint",))


def _on_path(binary: str, version: str) -> Path | None:
    """A binary of the pinned version already on PATH, if any."""
    found = shutil.which(binary)
    if not found:
        return None
    try:
        out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(found) if version.lstrip("v") in (out.stdout + out.stderr) else None


def find_binary(tool: Tool, binary: str | None = None) -> Path | None:
    """Where the pinned binary is: the cache first, then PATH (same version only)."""
    binary = binary or tool.binaries[0]
    if tool.installed():
        return tool.path(binary)
    return _on_path(binary, tool.version)


def require_binary(tool: Tool, binary: str | None = None) -> Path:
    """Like find_binary, but raise a ToolError that says how to install it."""
    found = find_binary(tool, binary)
    if found is None:
        raise ToolError(
            f"{binary or tool.binaries[0]} {tool.version} is not installed: run `./dev setup` "
            f"(it installs into {tool.home})"
        )
    return found


# --- installing ----------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"[setup] {msg}", file=sys.stderr, flush=True)


def _run(cmd: Sequence[str | Path], **kw: object) -> None:
    _log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run(list(map(str, cmd)), check=True, **kw)  # type: ignore[call-overload]


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOTOOLCHAIN", "auto")
    env.setdefault("GOFLAGS", "-mod=mod")
    return env


def check_go() -> str:
    """Return the Go binary, or raise with what to install."""
    go = shutil.which("go")
    if not go:
        raise ToolError("Go is not installed: install Go >= 1.21 (it fetches the go1.26 toolchain itself)")
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()
    parts = out.removeprefix("go").split(".")
    if tuple(int(p) for p in parts[:2] if p.isdigit()) < MIN_GO:
        raise ToolError(f"{out} is too old: install Go >= 1.21 (GOTOOLCHAIN=auto then fetches go1.26)")
    return go


def _install_into(tool: Tool, build: Callable[[Path], None]) -> None:
    """Build into a temporary folder, then move it into place, so a half build is never used."""
    tool.home.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{tool.name}-", dir=tool.home.parent))
    try:
        (tmp / "bin").mkdir()
        build(tmp / "bin")
        if tool.home.exists():
            shutil.rmtree(tool.home)
        tmp.rename(tool.home)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def install_debian_packages() -> None:
    """Install the Debian packages the project needs (apt-get as root, else sudo)."""
    missing = []
    for pkg in DEBIAN_PACKAGES:
        q = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False)
        if "install ok installed" not in q.stdout:
            missing.append(pkg)
    if not missing:
        return
    prefix: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            raise ToolError("install these Debian packages first: sudo apt-get install " + " ".join(missing))
        prefix = ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run([*prefix, "apt-get", "update", "-qq"], env=env)
    _run([*prefix, "apt-get", "install", "-y", "-qq", *missing], env=env)


def install_uv() -> None:
    """Install uv from PyPI into the cache."""
    tool = uv_tool()
    if tool.installed():
        return

    def build(bin_dir: Path) -> None:
        target = bin_dir.parent / "site"
        _run([sys.executable, "-m", "pip", "install", "-q", "--target", target, f"uv=={UV_VERSION}"])
        (bin_dir / "uv").symlink_to(Path("..") / "site" / "bin" / "uv")  # relative: the folder is renamed

    _install_into(tool, build)


def install_pulumi() -> None:
    """Build the Pulumi CLI and language host from the wrapper Go module, plus the SDK's scripts."""
    tool = pulumi_tool()
    if tool.installed():
        return
    go = check_go()

    def build(bin_dir: Path) -> None:
        ldflags = (
            f"-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v{PULUMI_VERSION} "
            f"-X main.Version=v{PULUMI_VERSION}"
        )
        env = dict(_go_env(), CGO_ENABLED="0")
        env["GOFLAGS"] = "-mod=readonly"
        _run(
            [go, "build", "-trimpath", "-tags", "osusergo,grpcnotrace", "-ldflags", ldflags, "-o", f"{bin_dir}/",
             "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi", "./cmd/pulumi-language-python"],
            cwd=PULUMI_WRAPPER, env=env,
        )  # fmt: skip
        sdk_dir = subprocess.run(
            [go, "list", "-m", "-f", "{{.Dir}}", "github.com/pulumi/pulumi/sdk/v3"],
            cwd=PULUMI_WRAPPER, env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        for script in ("cmd/pulumi-language-python-exec", "dist/pulumi-resource-pulumi-python"):
            dst = bin_dir / Path(script).name
            shutil.copyfile(Path(sdk_dir) / "python" / script, dst)
            dst.chmod(0o755)

    _install_into(tool, build)


def install_livekit_server() -> None:
    """go install livekit-server at the pinned tag (it has no replace directives and no cgo)."""
    tool = livekit_server_tool()
    if tool.installed() or _on_path("livekit-server", tool.version):
        return
    go = check_go()

    def build(bin_dir: Path) -> None:
        env = dict(_go_env(), GOBIN=str(bin_dir), CGO_ENABLED="0")
        _run([go, "install", "-trimpath", f"{LIVEKIT_SERVER_PKG}@{LIVEKIT_SERVER_VERSION}"], env=env)
        (bin_dir / "server").rename(bin_dir / "livekit-server")

    _install_into(tool, build)


def install_actionlint() -> None:
    """go install actionlint at the pinned tag (no replace directives, no cgo)."""
    tool = actionlint_tool()
    if tool.installed() or _on_path("actionlint", tool.version):
        return
    go = check_go()

    def build(bin_dir: Path) -> None:
        env = dict(_go_env(), GOBIN=str(bin_dir), CGO_ENABLED="0")
        _run([go, "install", "-trimpath", f"{ACTIONLINT_PKG}@{ACTIONLINT_VERSION}"], env=env)

    _install_into(tool, build)


def install_livekit_sip() -> None:
    """Build livekit-sip with cgo from the wrapper module, using the Go module mirror when there is one."""
    tool = livekit_sip_tool()
    if tool.installed():
        return
    go = check_go()
    env = dict(_go_env(), CGO_ENABLED="1", GOFLAGS="-mod=readonly")
    if (mirror := go_mirror()) is not None:
        upstream = subprocess.run([go, "env", "GOPROXY"], capture_output=True, text=True, check=True).stdout.strip()
        env["GOPROXY"] = f"{mirror.as_uri()},{upstream}"
        _log(f"livekit-sip: using the Go module mirror {mirror}")

    def build(bin_dir: Path) -> None:
        ldflags = f"-X github.com/livekit/sip/version.Version={LIVEKIT_SIP_VERSION.lstrip('v')}"
        try:
            _run(
                [go, "build", "-trimpath", "-ldflags", ldflags, "-o", bin_dir / "livekit-sip", LIVEKIT_SIP_PKG],
                cwd=LIVEKIT_SIP_WRAPPER, env=env,
            )  # fmt: skip
        except subprocess.CalledProcessError as e:
            raise ToolError(
                f"livekit-sip {LIVEKIT_SIP_VERSION} did not build (go exited {e.returncode}; its output is above). "
                f"If the Go module proxy refused github.com/livekit/sip, point {GO_MIRROR_ENV} at a module mirror "
                "holding it (CI finds ../shared/goproxy); cgo needs the Debian packages pkg-config libopus-dev "
                "libopusfile-dev libsoxr-dev."
            ) from e

    _install_into(tool, build)


def sync_python_env() -> None:
    """Create or update the project's .venv from uv.lock (never re-locks), compiled to bytecode.

    As in the worker image (``UV_COMPILE_BYTECODE=1``): where ``PYTHONDONTWRITEBYTECODE`` is set, a venv
    without bytecode compiles livekit-agents from source in every process (~2 s of CPU per job process).
    """
    uv = uv_tool().path()
    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never")
    _run([uv, "sync", "--frozen", "--quiet", "--compile-bytecode"], cwd=REPO, env=env)


def container_env() -> dict[str, str]:
    """Environment for podman: the project's containers.conf (an explicit CONTAINERS_CONF wins)."""
    return {"CONTAINERS_CONF": str(CONTAINERS_CONF), **os.environ}


def container_engine() -> str:
    """The container engine to build and run images with: a working docker, else podman (set-up installs it)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True, timeout=30, check=False).returncode == 0:
        return docker
    podman = shutil.which("podman")
    if podman:
        return podman
    raise ToolError("no container engine: run `./dev setup` (Debian packages podman runc debootstrap) or start docker")


def base_image_ref() -> str:
    """The locally built base image (podman), tagged with a key of its inputs."""
    key = hashlib.sha256(repr((BASE_SUITE, BASE_PACKAGES, BASE_SOURCES)).encode()).hexdigest()[:12]
    return f"localhost/siphon-base:{BASE_SUITE}-{key}"


def _podman_has(ref: str) -> bool:
    cmd = ["podman", "image", "exists", ref]
    return subprocess.run(cmd, env=container_env(), capture_output=True, check=False).returncode == 0


def install_base_image() -> None:
    """Build the worker image's base from Debian packages (debootstrap) and import it into podman.

    Nothing to do with a working docker engine: the Dockerfile's default base comes from its registry.
    """
    if Path(container_engine()).name == "docker" or _podman_has(ref := base_image_ref()):
        return
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not os.access(debootstrap, os.X_OK):
        raise ToolError("debootstrap is not installed: run `./dev setup` as root (Debian package debootstrap)")
    if os.geteuid() != 0:
        raise ToolError("building the base image needs root (debootstrap and podman's image store): run as root")
    mirror = os.environ.get(DEBIAN_MIRROR_ENV, "http://deb.debian.org/debian")
    security = mirror.removesuffix("/debian") + "/debian-security" if mirror.endswith("/debian") else mirror
    cache_root().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".base-", dir=cache_root()) as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run([debootstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", BASE_SUITE, rootfs, mirror],
             stdout=subprocess.DEVNULL)  # fmt: skip
        lines = (line.format(mirror=mirror, security=security) for line in BASE_SOURCES)
        (rootfs / "etc" / "apt" / "sources.list").write_text("\n".join(lines) + "\n")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (rootfs / cache).glob("*"):
                if f.is_file():
                    f.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            _run(["podman", "import", "--change", "CMD [\"/bin/bash\"]", "-", ref], stdin=tar.stdout,
                 env=container_env(), stdout=subprocess.DEVNULL)  # fmt: skip
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait()


# Installed in this order; set-up stops at the first failure, whose message says what to install.
STEPS: tuple[tuple[str, Callable[[], None]], ...] = (
    ("debian packages", install_debian_packages),
    ("uv", install_uv),
    ("python env", sync_python_env),
    ("pulumi", install_pulumi),
    ("livekit-server", install_livekit_server),
    ("livekit-sip", install_livekit_sip),
    ("actionlint", install_actionlint),
    ("worker base image", install_base_image),
)


def install_all() -> int:
    """Install everything; return 0, or 1 if a tool failed. Prints per-step timings."""
    for name, step in STEPS:
        t0 = time.monotonic()
        try:
            step()
        except (ToolError, subprocess.CalledProcessError, OSError) as e:
            _log(f"ERROR: {name}: {e}")
            return 1
        _log(f"{name}: ok ({time.monotonic() - t0:.1f}s)")
    return 0


def bin_dirs() -> list[Path]:
    """The cache bin folders to put on PATH (installed ones only)."""
    pinned = (uv_tool(), pulumi_tool(), livekit_server_tool(), livekit_sip_tool(), actionlint_tool())
    return [t.bin_dir for t in pinned if t.installed()]


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``install`` (everything), ``path`` (PATH entries, one per line)."""
    args = list(sys.argv[1:] if argv is None else argv)
    cmd = args[0] if args else "install"
    if cmd == "install":
        return install_all()
    if cmd == "path":
        print(os.pathsep.join(str(p) for p in bin_dirs()))
        return 0
    print("usage: python3 -m localenv.tools [install|path]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
