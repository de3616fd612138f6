"""Start-up: what the command line loads before it does any work.

Every run of `reconciler plan` pays for its imports before the first
request; in CI that cost is paid per job. Modules that only one command
(import, apply, schema) or one rare path (explaining why an index is
rewritten, with DeepDiff and so numpy) needs are imported where they are
used, so that plan and validate start without them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

NOT_AT_START = (
    "deepdiff",
    "numpy",
    "reconciler.adopt",
    "reconciler.apply",
    "reconciler.desired.jsonschema",
)

_IMPORT = """
import json, sys
import reconciler.cli
print(json.dumps(sorted(sys.modules)))
"""

_VALIDATE = f"""
import json, sys
from reconciler.cli import main
try:
    main(["validate", {str(ROOT / "desired")!r}])
except SystemExit as stop:
    assert not stop.code, stop.code
print(json.dumps(sorted(sys.modules)))
"""


@pytest.fixture(scope="module")
def loaded() -> dict[str, set[str]]:
    """Modules in sys.modules after importing the CLI, and after validate."""
    return {
        "import": _modules(_IMPORT),
        "validate": _modules(_VALIDATE),
    }


def _modules(code: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


@pytest.mark.parametrize("module", NOT_AT_START)
@pytest.mark.parametrize("when", ["import", "validate"])
def test_the_command_line_starts_without(
    loaded: dict[str, set[str]], when: str, module: str
) -> None:
    """Neither importing the CLI nor validating loads what plan never needs."""
    assert module not in loaded[when]


def test_the_check_sees_what_is_loaded(loaded: dict[str, set[str]]) -> None:
    """The subprocess reports modules it did load, so a miss is a real one."""
    assert {"click", "pydantic", "reconciler.cli", "reconciler.desired"} <= (
        loaded["validate"]
    )
