"""The registry client: authentication, TLS, retries, manifests, blobs, tags."""

from reconciler.registry._copy import BlobCopy, blob_copy
from reconciler.registry._credentials import (
    Credentials,
    CredentialsError,
    DockerConfig,
    docker_config,
    resolve_credentials,
)
from reconciler.registry._errors import (
    AuthenticationError,
    ConnectionFailedError,
    IntegrityError,
    NotFoundError,
    PermissionDeniedError,
    RegistryError,
    ServerError,
    TLSError,
    TooManyRequestsError,
)
from reconciler.registry._retry import RetryPolicy
from reconciler.registry._settings import ConnectionSettings
from reconciler.registry._wire import PooledTransport, connection_pool
from reconciler.registry.client import FetchedManifest, ManifestInfo, RegistryClient

__all__ = [
    "AuthenticationError",
    "BlobCopy",
    "ConnectionFailedError",
    "ConnectionSettings",
    "Credentials",
    "CredentialsError",
    "DockerConfig",
    "FetchedManifest",
    "IntegrityError",
    "ManifestInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "PooledTransport",
    "RegistryClient",
    "RegistryError",
    "RetryPolicy",
    "ServerError",
    "TLSError",
    "TooManyRequestsError",
    "blob_copy",
    "connection_pool",
    "docker_config",
    "resolve_credentials",
]
