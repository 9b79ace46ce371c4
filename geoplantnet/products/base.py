"""What a product is, declared once, and the registry every command, the annual refresh and the evaluation iterate.

A tiled product is its store's layout, a plan made on the driver (the job every tile task receives, the run's
fingerprint parts and attributes) and a tile function run on the workers; the streaming, leases, resume and
completion are :mod:`geoplantnet.runs.tiles`' and never a product's. A product declares:

- ``name``: the ``geoplantnet_product`` attribute of its store, and its registry key;
- ``store``: its default store name under ``store.root``;
- ``requires``: the products it reads (the refresh runs them first);
- ``yearly``: whether the annual refresh maps it every year;
- ``plan``: ``plan(ctx, client)`` -> :class:`TilePlan` (``ctx`` is the run's context: see
  :class:`geoplantnet.runs.context.RunContext`); None for a product written another way (a report, a table).

Registering is one call (:func:`register`); a new product is one module plus that call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from geoplantnet.core.errors import GeoplantnetError
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.storage.tiles import TileOutput


@dataclass(frozen=True)
class TilePlan:
    """A tiled run decided on the driver before anything is written: what :func:`geoplantnet.runs.tiles.produce_tiles`
    needs besides the run's settings."""

    fn: Callable[[Any, Tile], dict[str, Any]]
    job: Any
    output: TileOutput
    grid: Grid
    tile: int
    layout: tuple[Any, Mapping[str, Mapping[str, Any]]]
    parts: Mapping[str, str]
    attrs: Mapping[str, Any]
    error: type[GeoplantnetError]
    resources: dict[str, float] | None = None


@dataclass(frozen=True)
class Product:
    """A product as the registry knows it (see the module docstring)."""

    name: str
    store: str
    title: str
    requires: tuple[str, ...] = ()
    yearly: bool = False
    plan: Callable[[Any, Any], TilePlan] | None = field(default=None, compare=False)


_REGISTRY: dict[str, Product] = {}


class UnknownProductError(GeoplantnetError):
    """A product name the registry does not hold."""


def register(product: Product) -> Product:
    """Add ``product`` to the registry (again: replaced, so a module reloaded in a notebook registers once)."""
    missing = [r for r in product.requires if r not in _REGISTRY and r != product.name]
    if missing:
        raise ValueError(f"product {product.name} requires {missing}: register those first")
    _REGISTRY[product.name] = product
    return product


def unregister(name: str) -> None:
    """Remove ``name`` (a product registered for a test or a session)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> Product:
    """The registered product ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownProductError(f"unknown product {name!r}: registered are {', '.join(_REGISTRY)}") from None


def products(*, yearly: bool | None = None) -> list[Product]:
    """The registered products in an order where each comes after those it requires (then registration order);
    ``yearly`` selects those the annual refresh maps (True) or not (False)."""
    ordered: list[Product] = []
    seen: set[str] = set()

    def visit(p: Product) -> None:
        if p.name in seen:
            return
        seen.add(p.name)
        for r in p.requires:
            if r in _REGISTRY:
                visit(_REGISTRY[r])
        ordered.append(p)

    for p in list(_REGISTRY.values()):
        visit(p)
    return [p for p in ordered if yearly is None or p.yearly == yearly]
