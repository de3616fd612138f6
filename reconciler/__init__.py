"""Keep multi-architecture image indexes in a registry as desired state says."""

__version__ = "0.1.0"
