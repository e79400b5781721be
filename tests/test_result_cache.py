"""The result cache (lib.core.result_cache): keys change with every field that decides a result, a cached
cell is returned without recomputing, and a corrupt or mismatched entry is an error, never recomputed over."""
from __future__ import annotations

import math

import pytest
import torch

from lib.core.cache import spec_hash
from lib.core.result_cache import ResultCache, ResultCacheError, images_digest, result_key
from lib.core.results import result_row

X = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 3])
BASE = dict(defense={"name": "jpeg", "quality": 50}, target="abc123", attack={"name": "pgd", "eps": 8 / 255, "steps": 20},
            threat_model="bpda", x=X, y=Y, seed=0)


def row(correct=3, n=4):
    return result_row(defense="JPEG", classifier="natural", dataset="shapes10", threat_model="bpda", attack="pgd",
                      eps=8 / 255, steps=20, step_size=2 / 255, correct=correct, n=n, seed=0, seconds=1.5)


@pytest.mark.parametrize("field, value", [
    ("defense", {"name": "jpeg", "quality": 75}), ("target", "def456"), ("attack", {"name": "pgd", "eps": 8 / 255, "steps": 40}),
    ("threat_model", "bpda+eot"), ("x", X.clone().index_put_((torch.tensor([0]),), torch.zeros(3, 8, 8))),
    ("y", torch.tensor([0, 1, 2, 4])), ("seed", 1)])
def test_every_field_that_decides_a_result_changes_the_key(field, value):
    assert spec_hash(result_key(**{**BASE, field: value})) != spec_hash(result_key(**BASE))


def test_the_same_cell_has_the_same_key_and_images_are_hashed_by_content():
    assert spec_hash(result_key(**BASE)) == spec_hash(result_key(**{**BASE, "x": X.clone()}))
    assert images_digest(X, Y) != images_digest(X.double(), Y)  # dtype is part of the digest


def test_a_cached_cell_is_not_computed_again(tmp_path):
    cache, key, calls = ResultCache(tmp_path), result_key(**BASE), []

    def compute():
        calls.append(1)
        return row()

    first, cached_first = cache.get_or_compute(key, compute)
    second, cached_second = cache.get_or_compute(key, compute)
    assert (cached_first, cached_second, len(calls)) == (False, True, 1)
    assert second == first
    empty, _ = ResultCache(tmp_path / "nan").get_or_compute(key, lambda: row(0, 0))  # n = 0: NaN round-trips
    assert math.isnan(empty["accuracy"])


def test_corrupt_or_mismatched_entries_are_errors_and_are_left_in_place(tmp_path):
    cache, key = ResultCache(tmp_path), result_key(**BASE)
    path = cache.put(key, row())
    path.write_text("{not json")
    with pytest.raises(ResultCacheError, match="corrupt.*Delete"):
        cache.get_or_compute(key, row)
    assert path.read_text() == "{not json"  # nothing recomputed over it
    other = result_key(**{**BASE, "seed": 7})
    path.write_text("[1, 2]")  # valid JSON of the wrong shape
    with pytest.raises(ResultCacheError, match="format"):
        cache.get(key)
    cache.put(other, row())
    cache.path(other).rename(path)  # another cell's entry under this cell's name
    with pytest.raises(ResultCacheError, match="another cell"):
        cache.get(key)


def test_forget_drops_one_defense_and_keeps_the_others(tmp_path):
    cache = ResultCache(tmp_path)
    jpeg, tvm = result_key(**BASE), result_key(**{**BASE, "defense": {"name": "tvm"}})
    cache.put(jpeg, row()), cache.put(tvm, row())
    assert cache.forget("jpeg") == [cache.path(jpeg)]
    assert cache.get(jpeg) is None and cache.get(tvm) is not None
    assert cache.forget("jpeg") == []
    cache.path(jpeg).write_text("{not json")
    with pytest.raises(ResultCacheError, match="corrupt"):
        cache.forget("tvm")
    assert cache.get(tvm) is not None  # nothing deleted before the error
