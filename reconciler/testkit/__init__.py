"""Test infrastructure: a real registry, a Harbor-like token service, images.

Nothing here is used by the reconciler itself. The test suite, the demo and
the benchmarks import it to stand up what the product talks to:

- `pki`: a throw-away CA and the certificates signed by it;
- `tokens`: a token service that answers the way Harbor's `/service/token` does;
- `registry`: Debian's `docker-registry` (CNCF Distribution 2.8) as a subprocess;
- `images`: a minimal pusher of small but real images and indexes;
- `skopeo`: an independent client that reads back what was pushed.

Every server listens on 127.0.0.1 only.
"""

from __future__ import annotations
