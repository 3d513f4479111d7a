"""The ``meta_custom_audiences`` destination (see :mod:`destinations.meta.adapter`)."""

from destinations.meta.adapter import MetaCustomAudiences
from destinations.meta.config import MetaConfig, MetaCredentials

__all__ = ["MetaConfig", "MetaCredentials", "MetaCustomAudiences"]
