"""The errors a user can act on. The CLI prints any of these as one line and exits with status 2; every other
exception is a bug and ends in a traceback (exit status 1).

Each message names what to fix: the file, the setting, the service or the store. Module-specific errors subclass
one of these (``CatalogUnavailableError`` is a :class:`ServiceError`, ``StoreError`` an :class:`InputError`, ...),
so callers can catch by kind without knowing the module.
"""

from __future__ import annotations


class GeoplantnetError(Exception):
    """Base of the user-facing errors: the message is one line naming what to fix."""


class InputError(GeoplantnetError, ValueError):
    """A file, table, raster, model or store given as input that cannot be used."""


class ConfigError(GeoplantnetError, ValueError):
    """A setting (YAML file, environment variable or ``--set``) that cannot be read or does not validate."""


class ServiceError(GeoplantnetError, ConnectionError):
    """A service (STAC API, object store, Dask scheduler, database) that cannot be reached or failed to answer in
    time."""


class RefusedError(GeoplantnetError):
    """An operation refused to protect a user's data (an existing folder or store, a store another run writes)."""
