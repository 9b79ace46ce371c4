"""The typed names of the training-set contract: input modalities and sample sources.

``StrEnum`` members equal (and hash as) their strings, so stored variables, ``source`` values, model specs and JSON
stay plain strings; members also print as plain strings (``repr`` too), so messages and listings are unchanged.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np


class _Name(StrEnum):
    def __repr__(self) -> str:
        return repr(self.value)


class Modality(_Name):
    """An input of the species network (and a variable of the training set)."""

    PATCH = "patch"  # Sentinel-2 seasonal composites around the point
    SERIES = "series"  # the composites' values at the point
    ENV = "env"  # environmental patch around the point


ENV_POINT = "env_point"  # stored environmental values at the point: read as a 1 x 1 ``env`` patch


class Source(_Name):
    """Where a sample comes from (its order gives the integer codes batches carry)."""

    PA = "pa"  # presence-absence survey: a complete species list
    PO = "po"  # presence-only record
    BG = "bg"  # background point


MODALITIES: tuple[str, ...] = tuple(m.value for m in Modality)
SOURCES: tuple[str, ...] = tuple(s.value for s in Source)
SOURCE_CODE: dict[str, int] = {name: code for code, name in enumerate(SOURCES)}


def target_group_labels(labels: np.ndarray) -> np.ndarray:
    """Labels of presence-only record sites scored against the target group: 1 where a species was recorded, 0 where
    only other species were (someone recording the group visited the site and did not record it), so the AUC of a
    species compares sites that carry the same observer bias (Phillips et al. 2009, *Ecol. Appl.* 19: 181-197)."""
    return np.where(np.asarray(labels) == 1, 1, 0).astype("int8")
