"""The one GDAL environment every raster read of a run goes through (stackstac's tasks, header checks).

A tile task on a worker that shares no disk with the driver reads ``s3://`` COGs through GDAL's ``/vsis3/`` (rasterio
turns an ``s3://`` href into ``/vsis3/``). GDAL does not read fsspec's storage options, so :func:`gdal_env` translates
the store's options (endpoint, region, an explicit credential) into GDAL configuration options of the environment
stackstac opens and reads each asset in. Nothing is written anywhere: the environment travels inside the Dask graph,
as the store options of the tile writers do, and a worker without a credential in the options uses its own
environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, as a Kubernetes Secret gives them), which GDAL reads
itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

import rasterio
import stackstac
from rasterio.session import Session
from stackstac.rio_env import LayeredEnv

# GDAL options that hold a credential: rasterio refuses them as plain options (they reach GDAL through a session),
# and they are never shown (a failed task's repr reaches the worker's log)
SECRET_OPTIONS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


class _Credential(Session):
    """A credential of the storage options, handed to GDAL by rasterio's ``Env`` as its session's options."""

    def __init__(self, options: Mapping[str, str]) -> None:
        self._options = dict(options)

    @classmethod
    def hascreds(cls, config: Mapping[str, Any]) -> bool:
        return "AWS_ACCESS_KEY_ID" in config and "AWS_SECRET_ACCESS_KEY" in config

    def get_credential_options(self) -> dict[str, str]:
        return dict(self._options)

    def __repr__(self) -> str:
        return "_Credential(<redacted>)"


class GdalEnv(LayeredEnv):
    """stackstac's layered environment plus a credential (set through a rasterio session), never shown."""

    def __init__(
        self,
        always: dict[str, Any],
        open: dict[str, Any] | None = None,  # stackstac's name
        open_vrt: dict[str, Any] | None = None,
        read: dict[str, Any] | None = None,
        credential: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(always, open, open_vrt, read)
        self._credential = dict(credential or {})

    def _rio(self, options: dict[str, Any]) -> rasterio.Env:
        if self._credential:
            return rasterio.Env(session=_Credential(self._credential), **options)
        return rasterio.Env(**options)

    @property
    def always(self) -> rasterio.Env:
        try:
            return self._threadlocal.always
        except AttributeError:
            env = self._threadlocal.always = self._rio(self._always)
            return env

    def _get_layered_option(self, name: str, if_empty: str = "always") -> rasterio.Env:
        try:
            return getattr(self._threadlocal, name)
        except AttributeError:
            opts = getattr(self, "_" + name)
            env = self._rio(dict(self._always, **opts)) if opts else getattr(self, if_empty)
            setattr(self._threadlocal, name, env)
            return env

    def updated(
        self,
        always: dict[str, Any] | None = None,
        open: dict[str, Any] | None = None,  # stackstac's name
        open_vrt: dict[str, Any] | None = None,
        read: dict[str, Any] | None = None,
        credential: Mapping[str, str] | None = None,
    ) -> GdalEnv:
        """A copy with more options in each layer (and ``credential`` in place of this one's, when given)."""
        layers = {"always": always, "open": open, "open_vrt": open_vrt, "read": read}
        merged = {k: {**getattr(self, f"_{k}"), **(v or {})} for k, v in layers.items()}
        return GdalEnv(**merged, credential=self._credential if credential is None else credential)

    def __getstate__(self) -> tuple:  # type: ignore[override]
        return (self._always, self._open, self._open_vrt, self._read, self._credential)

    def __setstate__(self, state: tuple) -> None:  # type: ignore[override]
        self.__init__(*state)  # type: ignore[misc]

    def __repr__(self) -> str:
        layers = ", ".join(f"{k}={getattr(self, f'_{k}')}" for k in ("always", "open", "open_vrt", "read"))
        return f"GdalEnv({layers}, credential={'<redacted>' if self._credential else None})"


# Reads of remote COGs are bounded: GDAL's own default waits without limit on a server that accepts and never answers.
# Fixed here rather than configured: the reads happen inside stackstac on the workers, and these bounds are generous
# for one HTTP range request.
_DEFAULT = stackstac.DEFAULT_GDAL_ENV
GDAL_ENV = GdalEnv(
    always={
        **_DEFAULT._always,
        "GDAL_HTTP_TIMEOUT": "60",
        "GDAL_HTTP_CONNECTTIMEOUT": "20",
        "GDAL_HTTP_MAX_RETRY": "3",
        "GDAL_HTTP_RETRY_DELAY": "1",
    },
    open=_DEFAULT._open,
    open_vrt=_DEFAULT._open_vrt,
    read=_DEFAULT._read,
)


def s3_options(storage_options: Mapping[str, Any] | None) -> dict[str, str]:
    """GDAL's ``/vsis3/`` configuration for s3fs storage options: the endpoint (``endpoint_url`` or
    ``client_kwargs.endpoint_url``) as ``AWS_S3_ENDPOINT`` host:port with path-style addressing (an S3-compatible
    server has no per-bucket host names) and ``AWS_HTTPS=NO`` for ``http://``; the region; ``anon``; a profile; and
    a credential only where the options give one. Empty for no options (local inputs: GDAL as it always was)."""
    options = dict(storage_options or {})
    client = dict(options.get("client_kwargs") or {})
    gdal: dict[str, str] = {}
    endpoint = options.get("endpoint_url") or client.get("endpoint_url")
    if endpoint:
        parsed = urlparse(str(endpoint))
        gdal["AWS_S3_ENDPOINT"] = parsed.netloc or parsed.path  # "host:port", or a bare host given without scheme
        gdal["AWS_HTTPS"] = "NO" if parsed.scheme == "http" else "YES"
        gdal["AWS_VIRTUAL_HOSTING"] = "FALSE"
    region = client.get("region_name") or options.get("region_name") or options.get("region")
    if region:
        gdal["AWS_REGION"] = gdal["AWS_DEFAULT_REGION"] = str(region)
    if options.get("anon"):
        gdal["AWS_NO_SIGN_REQUEST"] = "YES"
    if options.get("profile"):
        gdal["AWS_PROFILE"] = str(options["profile"])
    if options.get("key") and options.get("secret"):
        gdal["AWS_ACCESS_KEY_ID"] = str(options["key"])
        gdal["AWS_SECRET_ACCESS_KEY"] = str(options["secret"])
        # explicit keys stand alone, as botocore takes them: a session token in the worker's environment (STS)
        # belongs to another credential and would spoil the signature
        gdal["AWS_SESSION_TOKEN"] = str(options.get("token") or "")
    return gdal


def gdal_env(storage_options: Mapping[str, Any] | None = None) -> LayeredEnv:
    """:data:`GDAL_ENV`, with the ``/vsis3/`` settings of ``storage_options`` (the object store the run's inputs
    were published to) when given: the environment of every asset a cube or a tile task opens."""
    options = s3_options(storage_options)
    if not options:
        return GDAL_ENV
    credential = {k: options.pop(k) for k in SECRET_OPTIONS if k in options}
    return GDAL_ENV.updated(always=options, credential=credential)
