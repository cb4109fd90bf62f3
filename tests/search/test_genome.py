"""Genomes: the value type (levels, JSON, changed modules, the uniform genome)."""

from __future__ import annotations

import json

import pytest

from darwin_modifier.search.genome import Genome, uniform

# ---- Genome --------------------------------------------------------------------------


def test_genome_is_hashable_json_and_normalises_sequences():
    g = Genome([1, 2, 3], (4, 5, 6))
    assert g.attn == (1, 2, 3) and g.mlp == (4, 5, 6) and g.num_layers == 3
    assert g == Genome((1, 2, 3), (4, 5, 6)) and g in {Genome((1, 2, 3), [4, 5, 6])}
    assert Genome.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    assert g.levels("mlp") == (4, 5, 6)
    h = g.with_level("mlp", 1, 9)
    assert h.mlp == (4, 9, 6) and g.mlp == (4, 5, 6)
    assert g.changed(h) == [("mlp", 1)]
    assert uniform(5, 2) == Genome((5, 5), (5, 5))


@pytest.mark.parametrize(
    "attn, mlp, error",
    [((1, 2), (1,), ValueError), ((-1,), (0,), ValueError), ((1.5,), (0,), TypeError)],
)
def test_genome_rejects_bad_levels(attn, mlp, error):
    with pytest.raises(error):
        Genome(attn, mlp)


def test_genome_from_dict_needs_both_modules():
    with pytest.raises(ValueError, match="lacks"):
        Genome.from_dict({"attn": [1]})
