"""Where a workspace may point a destination's requests (its credentials ride on them).

A pull request can change any workspace file, and a job that plans or applies it holds the
destinations' secrets: an ``endpoint`` (or an S3 ``endpoint_url`` in a ``config`` block)
pointing elsewhere than the vendor would carry the token, the AWS session token or the
signature there. So an endpoint override is used only when its host is a loopback address
(a local test server) or listed in the environment variable :data:`ALLOWED_ENV`, which the
job sets (e.g. ``RECONCILE_ENDPOINTS=proxy.internal.example.com``) and a workspace file
cannot.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

from reconciler.errors import ConfigError, Location

__all__ = ["ALLOWED_ENV", "check_endpoints"]

ALLOWED_ENV = "RECONCILE_ENDPOINTS"
#: keys of an integration's ``config`` whose value says where its requests go
_ENDPOINT_KEYS = {"endpoint", "endpoint_url"}


def check_endpoints(
    name: str,
    endpoint: str | None,
    config: Mapping[str, Any],
    where: Location,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Raise :class:`ConfigError` at ``where`` for an endpoint override of integration
    ``name`` (its ``endpoint``, or an endpoint key anywhere in its ``config``) that is not
    https (plain http to loopback only) or whose host is neither loopback nor allowed."""
    urls = ([("endpoint", endpoint)] if endpoint else []) + list(_config_endpoints(config))
    if not urls:  # the vendor's own host: nothing to parse (httpx is loaded only when needed)
        return
    import httpx

    from destinations.http import check_url, is_loopback

    allowed = {h.strip().lower() for h in environ.get(ALLOWED_ENV, "").split(",") if h.strip()}
    for field, url in urls:
        try:
            check_url(url)
            parsed = httpx.URL(url)
        except (ConfigError, httpx.InvalidURL) as exc:
            message = exc.message if isinstance(exc, ConfigError) else str(exc)
            raise ConfigError(f"integration {name!r}: {field}: {message}", where) from None
        host, port = parsed.host, parsed.port
        if is_loopback(host) or host.lower() in allowed or f"{host}:{port}".lower() in allowed:
            continue
        raise ConfigError(
            f"integration {name!r} sends its requests (and their credentials) to {host} "
            f"({field}) instead of the vendor's own host: a workspace file alone may not do "
            f"that, as a pull request could send the secrets anywhere. Allow the host in the "
            f"job's environment ({ALLOWED_ENV}={host}), or remove the override",
            where,
        )


def _config_endpoints(config: Any, path: str = "config") -> Iterator[tuple[str, str]]:
    if isinstance(config, Mapping):
        for key, value in config.items():
            at = f"{path}.{key}"
            if key in _ENDPOINT_KEYS and isinstance(value, str) and value:
                yield at, value
            else:
                yield from _config_endpoints(value, at)
    elif isinstance(config, list):
        for i, value in enumerate(config):
            yield from _config_endpoints(value, f"{path}.{i}")
