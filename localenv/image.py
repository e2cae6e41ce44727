"""Build the worker image (``worker/Dockerfile``) with the engine at hand, and describe it: ``./dev image``.

Docker when its engine runs (the Dockerfile's registry base), else podman with the base ``./dev setup`` made
from Debian packages (``localenv.tools.install_base_image``). Both keep their layer cache, so a rebuild redoes
only the layers whose inputs changed. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from localenv import tools

DOCKERFILE = tools.REPO / "worker" / "Dockerfile"
IMAGE_REPOSITORY = "localhost/siphon-worker"
DEFAULT_TAG = "dev"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # TLS to the package registries from the build


@dataclass(frozen=True)
class BuiltImage:
    """A built worker image as its engine reports it."""

    engine: str  # path of docker or podman
    ref: str  # repository:tag
    image_id: str
    digest: str  # sha256:... of the image manifest (podman); the image id with docker until pushed
    size_bytes: int
    build_seconds: float

    @property
    def pinned(self) -> str:
        """The reference pinned to the digest."""
        return f"{self.ref.rsplit(':', 1)[0]}@{self.digest}"

    def summary(self) -> str:
        """One line for people: reference, digest, size, build time."""
        return (
            f"{self.ref} digest {self.digest} size {self.size_bytes / 1e6:.0f} MB "
            f"(built in {self.build_seconds:.1f}s with {Path(self.engine).name})"
        )


def engine_env() -> dict[str, str]:
    """Environment for the engine's commands (podman: the project's containers.conf)."""
    return tools.container_env()


def is_podman(engine: str) -> bool:
    """True for podman (needs chroot isolation, host network and the project's containers.conf here)."""
    return Path(engine).name == "podman"


def build(tag: str = DEFAULT_TAG, *, quiet: bool = True) -> BuiltImage:
    """Build the worker image (layer-cached) and describe it; raise CalledProcessError with the engine's output."""
    engine = tools.container_engine()
    ref = f"{IMAGE_REPOSITORY}:{tag}"
    argv = [engine, "build", "-f", str(DOCKERFILE), "-t", ref, "--network", "host"]
    if is_podman(engine):
        argv += ["--isolation", "chroot", "--format", "docker", "--layers"]  # docker format keeps HEALTHCHECK
        argv += ["--build-arg", f"PYTHON_IMAGE={tools.base_image_ref()}"]
        if HOST_CA_BUNDLE.exists():
            argv += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    argv.append(str(tools.REPO))
    started = time.monotonic()
    out = subprocess.run(argv, env=engine_env(), capture_output=quiet, text=True, check=False)
    took = time.monotonic() - started
    if out.returncode != 0:
        raise subprocess.CalledProcessError(out.returncode, argv, out.stdout, out.stderr)
    return describe(engine, ref, took)


def describe(engine: str, ref: str, build_seconds: float = 0.0) -> BuiltImage:
    """The engine's facts about an image."""
    raw = subprocess.run(
        [engine, "image", "inspect", ref], env=engine_env(), capture_output=True, text=True, check=True
    ).stdout
    info = json.loads(raw)[0]
    image_id = info["Id"] if info["Id"].startswith("sha256:") else f"sha256:{info['Id']}"
    digest = info.get("Digest") or image_id
    return BuiltImage(engine, ref, image_id, digest, int(info["Size"]), build_seconds)


def main(argv: list[str] | None = None) -> int:
    """CLI: build the worker image and print its reference, digest and size."""
    parser = argparse.ArgumentParser(prog="./dev image", description="Build the worker image (worker/Dockerfile).")
    parser.add_argument("--tag", default=DEFAULT_TAG, help=f"tag of {IMAGE_REPOSITORY} (default {DEFAULT_TAG})")
    args = parser.parse_args(argv)
    try:
        image = build(args.tag, quiet=False)
    except (subprocess.CalledProcessError, tools.ToolError) as e:
        print(f"image build failed: {e}", file=sys.stderr)
        return 1
    print(image.summary())
    print(f"pinned: {image.pinned}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
