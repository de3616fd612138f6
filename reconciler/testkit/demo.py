"""The end-to-end demo: a local registry, per-arch images, plan, apply, plan.

Run with `python -m reconciler.testkit.demo` (or `bash .ci/demo` on a fresh
machine). It starts Debian's docker-registry over TLS with a throw-away CA
and Harbor-like token authentication, seeds the java-gdal per-arch images,
writes a desired state for them from `desired/java-gdal.yaml`, then runs the
real command line: validate, plan, apply, plan again, and shows the index
with skopeo, an independent client.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from reconciler.testkit import skopeo
from reconciler.testkit.accounts import ADMIN, ROBOT, TOKEN_USERS
from reconciler.testkit.images import push_image
from reconciler.testkit.pki import create_pki
from reconciler.testkit.registry import RegistryServer
from reconciler.testkit.tokens import TokenService

VERSIONS = ("3.11.3", "3.10.1", "3.9.2", "3.8.5")
ARCHES = ("amd64", "arm64")
EXAMPLE = Path(__file__).resolve().parents[2] / "desired" / "java-gdal.yaml"


def main() -> int:
    """Run the demo in a temporary folder; return the exit status."""
    with tempfile.TemporaryDirectory(prefix="reconciler-demo-") as folder:
        return _demo(Path(folder))


def _demo(workdir: Path) -> int:
    pki = create_pki(workdir / "pki")
    with TokenService(pki.server, TOKEN_USERS, workdir / "tokens") as tokens:
        registry = RegistryServer(
            workdir / "registry",
            auth="token",
            tls=pki.server,
            ca_file=pki.ca_file,
            token_service=tokens,
        )
        with registry:
            _say(f"registry with Harbor-like token auth at https://{registry.host}")
            _seed(registry)
            _write_desired(workdir, registry, pki.ca_file)
            return _run_steps(workdir, registry)


def _seed(registry: RegistryServer) -> None:
    _say("pushing single-arch images, as per-architecture CI runners do")
    for version in VERSIONS:
        for arch in ARCHES:
            repository = f"library/java-gdal-local-{arch}"
            pushed = push_image(
                registry,
                repository,
                version,
                architecture=arch,
                seed=f"{version}-{arch}",
                layers=2,
                credentials=registry.credentials(ADMIN),
            )
            print(f"  {registry.host}/{repository}:{version}  {pushed.digest[:19]}")


def _write_desired(workdir: Path, registry: RegistryServer, ca_file: Path) -> None:
    """The repository's example, pointed at the local registry and its CA."""
    text = EXAMPLE.read_text().replace("harbor.example.com", registry.host)
    text = text.replace("# ca_file: ../certs/harbor-ca.crt", "ca_file: ../ca.crt")
    (workdir / "ca.crt").write_bytes(ca_file.read_bytes())
    (workdir / "desired").mkdir()
    (workdir / "desired" / "java-gdal.yaml").write_text(text)


def _run_steps(workdir: Path, registry: RegistryServer) -> int:
    env = {
        **os.environ,
        "HARBOR_USERNAME": ROBOT,
        "HARBOR_PASSWORD": registry.users[ROBOT],
    }
    steps = [
        (["validate"], {0}),
        (["plan", "--detailed-exitcode"], {2}),
        (["apply", "--auto-approve"], {0}),
        (["plan", "--detailed-exitcode"], {0}),
    ]
    for arguments, expected in steps:
        _say("reconciler " + " ".join(arguments))
        command = [
            sys.executable,
            "-m",
            "reconciler",
            "--chdir",
            str(workdir),
            *arguments,
        ]
        status = subprocess.run(command, env=env, check=False).returncode
        if status not in expected:
            print(f"demo: unexpected exit {status}", file=sys.stderr)
            return 1
    _show(registry)
    return 0


def _show(registry: RegistryServer) -> None:
    reference = "library/java-gdal-local:3.8.5"
    credentials = registry.credentials(ADMIN)
    _say(f"skopeo inspect --raw {registry.host}/{reference}")
    print(skopeo.inspect_raw(registry, reference, credentials=credentials).decode())
    for arch in ARCHES:
        summary = skopeo.inspect(
            registry, reference, credentials=credentials, override_arch=arch
        )
        got = f"{summary['Os']}/{summary['Architecture']}"
        print(f"  pull for linux/{arch} gets an image for {got}")


def _say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
