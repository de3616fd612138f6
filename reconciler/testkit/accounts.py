"""The accounts every test registry knows, so tests, demo and benchmarks agree.

- `ADMIN`: pull, push and delete everywhere;
- `READER`: pull everywhere (token registries only);
- `ROBOT`: a Harbor robot account, pull and push in ``library/*`` with
  tokens, everywhere with htpasswd (which cannot scope).

The passwords are test data and protect nothing.
"""

from __future__ import annotations

from reconciler.testkit.tokens import UserTable

__all__ = ["ADMIN", "BASIC_USERS", "READER", "ROBOT", "TOKEN_USERS"]

ADMIN = "admin"
READER = "reader"
ROBOT = "robot$library+ci"

BASIC_USERS = {
    ADMIN: "admin-pass",
    ROBOT: "robot-pass",
}

TOKEN_USERS: UserTable = {
    # Distribution asks for "delete" on DELETE; Harbor grants it to admins.
    ADMIN: (BASIC_USERS[ADMIN], {"*": {"pull", "push", "delete"}}),
    READER: ("reader-pass", {"*": {"pull"}}),
    ROBOT: (BASIC_USERS[ROBOT], {"library/*": {"pull", "push"}}),
}
