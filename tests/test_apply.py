"""apply: exactly the planned writes, in a safe order, verified by reading back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.apply import apply_plan
from reconciler.desired import load_desired
from reconciler.live import read_live
from reconciler.oci import (
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    Digest,
    Index,
    Platform,
    Reference,
)
from reconciler.plan import Plan, plan_changes
from reconciler.registries import Registries, connection_settings
from reconciler.registry import RegistryClient
from reconciler.testkit import skopeo
from reconciler.testkit.accounts import READER
from reconciler.testkit.images import push_image
from reconciler.testkit.registry import RegistryServer

from .scenario import VERSIONS, Scenario

WRITES = r"/v2/.*/(manifests/.*|blobs/uploads/.*)"


@pytest.fixture
def scenario(
    registry_token: RegistryServer, namespace: str, tmp_path: Path
) -> Scenario:
    """The seed scenario: 8 single-arch sources and a desired file for them."""
    made = Scenario(registry_token, tmp_path, namespace)
    made.seed()
    made.write_desired()
    return made


def writes_since(server: RegistryServer, mark: int) -> int:
    """Manifest PUTs and blob upload requests after `mark`."""
    return sum(
        server.count(method, WRITES, since=mark)
        for method in ("PUT", "POST", "PATCH", "DELETE")
    )


def index_of(client: RegistryClient, ref: Reference) -> Index:
    manifest = client.manifest_get(ref).manifest
    assert isinstance(manifest, Index)
    return manifest


def assert_no_broken_index(scenario: Scenario) -> None:
    """Every version tag that exists is an index whose children all exist."""
    with scenario.client() as client:
        for version in VERSIONS:
            ref = scenario.ref(version)
            if client.manifest_head(ref) is None:
                continue
            for child in index_of(client, ref).manifests:
                found = client.manifest_head(ref.repository.digest(child.digest))
                assert found is not None, f"{ref} lists missing child {child.digest}"


def test_seed_scenario_applies_exactly(scenario: Scenario) -> None:
    """Indexes list the sources by digest with their platforms; no layer is uploaded."""
    mark = scenario.server.mark()

    result = scenario.run("apply", "--auto-approve")

    assert result.exit_code == 0, result.output
    assert "Apply complete! 14 added, 0 changed, 0 destroyed." in result.stdout
    assert scenario.server.blob_uploads(since=mark) == []
    assert (
        len(scenario.server.blob_mounts(since=mark)) == 16
    )  # 8 images x (config + layer)
    amd, arm = (
        scenario.sources[("3.8.5", "amd64")],
        scenario.sources[("3.8.5", "arm64")],
    )
    with scenario.client() as client:
        index = index_of(client, scenario.ref("3.8.5"))
        tagged = client.manifest_head(scenario.ref("3.8.5-amd64"))
        latest = client.manifest_head(scenario.ref("latest"))
        minor = client.manifest_head(scenario.ref("3.11"))
        version = client.manifest_head(scenario.ref("3.11.3"))
    assert index.media_type == DOCKER_MANIFEST_LIST
    assert [(c.digest, str(c.platform)) for c in index.manifests] == [
        (amd.digest, "linux/amd64"),
        (arm.digest, "linux/arm64"),
    ]
    assert tagged is not None
    assert tagged.digest == amd.digest
    assert version is not None
    assert latest is not None
    assert minor is not None
    assert latest.digest == minor.digest == version.digest
    assert scenario.run("plan", "--detailed-exitcode").exit_code == 0


def test_skopeo_pulls_the_right_child(scenario: Scenario, tmp_path: Path) -> None:
    """An independent client resolves linux/arm64 to the arm64 source image."""
    assert scenario.run("apply", "--auto-approve").exit_code == 0
    reference = f"{scenario.namespace}/java-gdal-local:3.8.5"
    creds = scenario.admin

    raw = skopeo.inspect_raw(scenario.server, reference, credentials=creds)
    pulled = skopeo.pull(
        scenario.server,
        reference,
        tmp_path / "pulled",
        credentials=creds,
        override_arch="arm64",
    )

    assert json.loads(raw)["mediaType"] == DOCKER_MANIFEST_LIST
    assert Digest.of(pulled) == scenario.sources[("3.8.5", "arm64")].digest
    config_digest = json.loads(pulled)["config"]["digest"].split(":")[1]
    config = json.loads((tmp_path / "pulled" / config_digest).read_bytes())
    assert config["architecture"] == "arm64"


def test_oci_sources_make_an_oci_index(
    registry_token: RegistryServer, namespace: str, tmp_path: Path
) -> None:
    """OCI sources give an OCI image index that skopeo reads."""
    scenario = Scenario(registry_token, tmp_path, namespace, fmt="oci")
    scenario.seed(versions=("3.8.5",))
    scenario.write_desired(versions=("3.8.5",), aliases={})

    assert scenario.run("apply", "--auto-approve").exit_code == 0

    reference = f"{namespace}/java-gdal-local:3.8.5"
    raw = skopeo.inspect_raw(scenario.server, reference, credentials=scenario.admin)
    assert json.loads(raw)["mediaType"] == OCI_INDEX


def test_second_apply_writes_nothing(scenario: Scenario) -> None:
    """Applying a converged state makes no write request at all."""
    assert scenario.run("apply", "--auto-approve").exit_code == 0
    mark = scenario.server.mark()

    result = scenario.run("apply", "--auto-approve")

    assert result.exit_code == 0
    assert "No changes." in result.stdout
    assert writes_since(scenario.server, mark) == 0


def test_saved_plan_applies_exactly_what_it_printed(scenario: Scenario) -> None:
    """apply --plan writes each planned address with its planned digest."""
    planned = scenario.run("plan", "--out", "plan.json")
    assert planned.exit_code == 0
    document = json.loads((scenario.workdir / "plan.json").read_text())

    result = scenario.run("apply", "--plan", "plan.json")

    assert result.exit_code == 0, result.output
    with scenario.client() as client:
        for change in document["changes"]:
            found = client.manifest_head(Reference.parse(change["address"]))
            assert found is not None
            assert found.digest == change["after"]


def test_stale_saved_plan_is_refused_and_writes_nothing(scenario: Scenario) -> None:
    """A source rebuilt after planning makes the plan stale; nothing is written."""
    assert scenario.run("plan", "--out", "plan.json").exit_code == 0
    scenario.push_source("3.9.2", "amd64", seed="rebuilt")
    mark = scenario.server.mark()

    result = scenario.run("apply", "--plan", "plan.json")

    assert result.exit_code == 1
    assert "plan is stale" in result.stderr
    assert "java-gdal-local-amd64:3.9.2" in result.stderr
    assert writes_since(scenario.server, mark) == 0


def test_saved_plan_holds_no_secret(scenario: Scenario) -> None:
    """The plan file names the credential variables, never their values."""
    assert scenario.run("plan", "--out", "plan.json").exit_code == 0

    text = (scenario.workdir / "plan.json").read_text()

    assert scenario.server.users[scenario.user] not in text
    assert "HARBOR_PASSWORD" in text


def test_apply_without_terminal_or_approval_refuses(scenario: Scenario) -> None:
    """No terminal and no --auto-approve: apply refuses and writes nothing."""
    mark = scenario.server.mark()

    result = scenario.run("apply")

    assert result.exit_code == 1
    assert "--auto-approve" in result.stderr
    assert writes_since(scenario.server, mark) == 0


def test_pull_only_user_is_refused_before_writing(scenario: Scenario) -> None:
    """A reader's apply fails with a permission error naming the repository."""
    scenario.user = READER
    mark = scenario.server.mark()

    result = scenario.run("apply", "--auto-approve")

    assert result.exit_code == 1
    assert "may not push" in result.stderr
    assert f"{scenario.namespace}/java-gdal-local" in result.stderr
    assert writes_since(scenario.server, mark) == 0


def test_registry_stopping_mid_apply_leaves_no_broken_index(scenario: Scenario) -> None:
    """Registry dies after one write: no index lacks a child, and apply converges."""
    desired = load_desired([scenario.workdir / "desired"])
    env = {
        "HARBOR_USERNAME": scenario.user,
        "HARBOR_PASSWORD": scenario.server.users[scenario.user],
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with Registries(connection_settings(desired)) as registries:
            plan: Plan = plan_changes(desired, read_live(desired, registries))
            report = apply_plan(
                plan,
                registries,
                on_done=lambda change: scenario.server.stop(graceful=False),
            )

    assert report.done
    assert report.failed
    assert len(report.done) < len(plan.changes)
    scenario.server.start()
    assert_no_broken_index(scenario)
    assert scenario.run("apply", "--auto-approve").exit_code == 0
    assert scenario.run("plan", "--detailed-exitcode").exit_code == 0
    assert_no_broken_index(scenario)


def test_killed_apply_process_leaves_no_broken_index(scenario: Scenario) -> None:
    """SIGKILL after the first completed change; the next apply completes the job."""
    env = {
        **os.environ,
        "HARBOR_USERNAME": scenario.user,
        "HARBOR_PASSWORD": scenario.server.users[scenario.user],
    }
    command = [sys.executable, "-m", "reconciler", "--chdir", str(scenario.workdir)]
    process = subprocess.Popen(
        [*command, "apply", "--auto-approve"],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("[1/"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)

    assert process.returncode == -signal.SIGKILL
    assert_no_broken_index(scenario)
    assert scenario.run("apply", "--auto-approve").exit_code == 0
    assert scenario.run("plan", "--detailed-exitcode").exit_code == 0


def test_platform_of_index_child_comes_from_config(scenario: Scenario) -> None:
    """A variant in the config (arm64/v8) is what the index entry says."""
    # Rebuilt with variant v8 in its config: still what linux/arm64 asks for.
    push_image(
        scenario.server,
        f"{scenario.namespace}/java-gdal-local-arm64",
        "3.8.5",
        architecture="arm64",
        variant="v8",
        seed="with-variant",
        credentials=scenario.admin,
    )

    assert scenario.run("apply", "--auto-approve").exit_code == 0

    with scenario.client() as client:
        index = index_of(client, scenario.ref("3.8.5"))
    assert index.manifests[1].platform == Platform("linux", "arm64", "v8")
