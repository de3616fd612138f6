"""The seed scenario: per-arch java-gdal images and a desired state for them.

Single-arch images `<ns>/java-gdal-local-amd64` and `-arm64` at four
versions, pushed to a real registry; a desired-state folder that asks for
the multi-arch `<ns>/java-gdal-local` with two aliases; and a way to run the
command line against it, in process, with credentials in the environment.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from reconciler.cli import main
from reconciler.oci import Reference
from reconciler.registry import ConnectionSettings, Credentials, RegistryClient
from reconciler.testkit.accounts import ADMIN, ROBOT
from reconciler.testkit.images import ImageFormat, PushedImage, push_image
from reconciler.testkit.registry import RegistryServer

VERSIONS = ("3.11.3", "3.10.1", "3.9.2", "3.8.5")
ARCHES = ("amd64", "arm64")
IMAGE = "java-gdal-local"


@dataclass
class Scenario:
    """A seeded registry and a desired-state folder describing what to make."""

    server: RegistryServer
    workdir: Path
    namespace: str
    user: str = ROBOT
    fmt: ImageFormat = "docker"
    sources: dict[tuple[str, str], PushedImage] = field(default_factory=dict)

    @property
    def repository(self) -> str:
        """The target repository, with its registry host."""
        return f"{self.server.host}/{self.namespace}/{IMAGE}"

    def ref(self, tag: str) -> Reference:
        return Reference.parse(f"{self.repository}:{tag}")

    def seed(
        self, versions: Sequence[str] = VERSIONS, arches: Sequence[str] = ARCHES
    ) -> None:
        """Push one single-arch image per version and architecture."""
        for version in versions:
            for arch in arches:
                self.push_source(version, arch)

    def push_source(
        self,
        version: str,
        arch: str,
        *,
        seed: str | None = None,
        config_arch: str | None = None,
    ) -> PushedImage:
        """Push (or rebuild, with another `seed`) the source of one platform."""
        pushed = push_image(
            self.server,
            f"{self.namespace}/{IMAGE}-{arch.replace('/', '')}",
            version,
            architecture=config_arch or arch.split("/")[0],
            variant=arch.split("/")[1] if "/" in arch else None,
            fmt=self.fmt,
            seed=seed or f"{version}-{arch}",
            credentials=self.admin,
        )
        self.sources[(version, arch)] = pushed
        return pushed

    @property
    def admin(self) -> tuple[str, str] | None:
        return self.server.credentials(ADMIN) if self.server.users else None

    def write_desired(
        self,
        *,
        versions: Sequence[str] = VERSIONS,
        platforms: Sequence[str] = ("linux/amd64", "linux/arm64"),
        aliases: dict[str, str] | None = None,
        extra: str = "",
    ) -> Path:
        """Write desired/java-gdal.yaml for this registry; return the folder."""
        folder = self.workdir / "desired"
        folder.mkdir(parents=True, exist_ok=True)
        assert self.server.ca_file is not None
        shutil.copy(self.server.ca_file, self.workdir / "ca.crt")
        alias_map = (
            {"latest": "3.11.3", "3.11": "3.11.3"} if aliases is None else aliases
        )
        alias_lines = "".join(f'      "{a}": "{v}"\n' for a, v in alias_map.items())
        (folder / "java-gdal.yaml").write_text(
            f"""version: 1
registries:
  {self.server.host}:
    ca_file: ../ca.crt
    credentials:
      username_env: HARBOR_USERNAME
      password_env: HARBOR_PASSWORD
images:
  - repository: {self.repository}
    versions: [{", ".join(f'"{v}"' for v in versions)}]
    platforms: [{", ".join(platforms)}]
    source: {self.server.host}/{self.namespace}/{IMAGE}-{{arch}}{{variant}}:{{version}}
{"    aliases:" + chr(10) + alias_lines if alias_map else ""}{extra}"""
        )
        return folder

    def run(self, *args: str, monkeypatch: pytest.MonkeyPatch | None = None) -> Result:
        """Run the command line in the scenario's folder, as `self.user`."""
        env = {}
        if self.server.users:
            env = {
                "HARBOR_USERNAME": self.user,
                "HARBOR_PASSWORD": self.server.users[self.user],
            }
        runner = CliRunner()
        return runner.invoke(
            main, ["--chdir", str(self.workdir), *args], env=env, catch_exceptions=False
        )

    def client(self) -> RegistryClient:
        """An admin client, for reading the registry back."""
        settings = ConnectionSettings(self.server.host, ca_file=self.server.ca_file)
        admin = self.admin
        return RegistryClient(
            settings, credentials=Credentials(*admin) if admin else None
        )

    def normalize(self, text: str) -> str:
        """Replace the run's host and namespace, for golden files."""
        text = text.replace(self.server.host, "registry.test")
        return re.sub(re.escape(self.namespace), "library/ns", text)


def with_own_cache(
    server: RegistryServer,
    workdir: Path,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Scenario:
    """The seed scenario, seeded and written, with an empty fact cache of its own."""
    monkeypatch.setenv("RECONCILER_CACHE_DIR", str(workdir / "cache"))
    monkeypatch.delenv("RECONCILER_NO_CACHE", raising=False)
    scenario = Scenario(server, workdir, namespace)
    scenario.seed()
    scenario.write_desired()
    return scenario
