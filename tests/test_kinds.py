"""Typed names of the training-set contract: they stay plain strings wherever they are stored, shown or compared."""

import json

import numpy as np

from geoplantnet.samples.kinds import MODALITIES, SOURCE_CODE, SOURCES, Modality, Source


def test_names_are_their_strings_everywhere() -> None:
    assert Modality.PATCH == "patch" and {"env": 1}[Modality.ENV] == 1 and f"{Modality.SERIES}_tile" == "series_tile"
    assert repr([Source.PA, Modality.ENV]) == "['pa', 'env']"  # messages listing them are unchanged
    assert json.dumps({Modality.ENV: Source.BG}) == '{"env": "bg"}'
    stored = np.concatenate([np.full(2, Source.PA), np.full(1, Source.BG)])
    assert stored.dtype.kind == "U" and stored.tolist() == ["pa", "pa", "bg"] and (stored == Source.BG).sum() == 1


def test_codes_follow_the_declared_order() -> None:
    assert MODALITIES == ("patch", "series", "env") and SOURCES == ("pa", "po", "bg")
    assert SOURCE_CODE == {"pa": 0, "po": 1, "bg": 2} and SOURCE_CODE[Source.BG] == 2
