"""The leaderboard protocol (lib.eval.leaderboard) and its exports (lib.eval.board_export): every column filled,
the planted control flagged, a second run served from the result cache, one defense's entries removed → only
that defense re-evaluated, the JSON export round-trips, and every claimed number resolves in lib/reference."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from lib.core.result_cache import ResultCache
from lib.defenses.registry import DEFENSES, get_defense
from lib.eval.board_export import board_markdown, export_board, load_board_json
from lib.eval.leaderboard import (CLAIMED, CONTROL, PROTOCOLS, Leaderboard, claimed, control_purifier,
                                  protocol_dict)

PROTOCOL = dataclasses.replace(PROTOCOLS["smoke"], n_eval=12, n_sanity=6, n_autoattack=2)
NAMES = ("none", "jpeg", "random_resize_pad", "bit_depth")  # deterministic, random, BPDA (non-differentiable)


def _board(model, x, y, cache) -> Leaderboard:
    surrogate = model  # the same network stands in for the surrogate: the transfer cell must still run and be keyed
    board = Leaderboard(model, {"hash": "target0"}, "natural", surrogate, {"hash": "surrogate0"}, x, y, PROTOCOL,
                        dataset="shapes10", seed=0, cache=cache, surrogate_name="natural seed 1")
    ready = {}
    for name in NAMES:
        d = get_defense(name, "shapes10", "smoke", 0, device="cpu")
        board.register(name, d.record, display_name=DEFENSES[name].display_name, kind="transform")
        ready[name] = (d.purifier, model)
    board.register(CONTROL, {"hash": "control"}, display_name="planted control", kind="control")
    ready[CONTROL] = (control_purifier(), model)
    board.add_shared(ready)
    for name, (purifier, classifier) in ready.items():
        board.add(name, purifier, classifier)
    return board


@pytest.fixture(scope="module")
def first(shapes_model, tmp_path_factory):
    model, x, y = shapes_model
    root = tmp_path_factory.mktemp("results")
    return _board(model, x, y, ResultCache(root)), root


def test_every_defense_has_every_column_and_the_control_is_flagged(first):
    board, _ = first
    table = board.table()
    assert set(table.name) == set(NAMES) | {CONTROL}
    for column in ("clean (%)", "oblivious (%)", "transfer (%)", "adaptive (%)", "gap (points)", "purify ms/image"):
        assert table[column].notna().all(), column
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    assert (np.diff(table["adaptive (%)"].to_numpy()) <= 0).all(), "ranked by adaptive accuracy"
    row = table.set_index("name")
    assert row.loc[CONTROL, "sanity"].startswith("FAILS"), row.loc[CONTROL, "sanity"]
    assert "bpda" in row.loc["bit_depth", "adaptive attack"]
    assert "eot" in row.loc["random_resize_pad", "adaptive attack"]
    assert np.isnan(row.loc["random_resize_pad", "AutoAttack (%)"])  # the rand version is off in this protocol
    assert row.loc["jpeg", "AutoAttack n"] == PROTOCOL.n_autoattack
    assert board.computed > 0 and board.hits == 0


def test_a_second_run_evaluates_nothing_and_a_removed_defense_only_itself(first, shapes_model):
    board, root = first
    model, x, y = shapes_model
    again = _board(model, x, y, ResultCache(root))
    assert again.computed == 0 and again.hits == board.computed
    timing = ["purify ms/image", "autoattack ci"]  # a fresh timing; a list with NaNs never equals itself
    assert again.table().drop(columns=timing).equals(board.table().drop(columns=timing))
    jpeg = [p for p in root.glob("*.json") if json.loads(p.read_text())["key"]["defense"]["name"] == "jpeg"]
    assert len(jpeg) == 6  # clean, oblivious, transfer, adaptive, AutoAttack, sanity
    for path in jpeg:
        path.unlink()
    third = _board(model, x, y, ResultCache(root))
    assert third.computed == len(jpeg) and third.hits == board.computed - len(jpeg)


def test_a_corrupt_entry_is_an_error_not_a_silent_recompute(first, shapes_model, tmp_path):
    board, root = first
    model, x, y = shapes_model
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in root.glob("*.json"):
        (copy / p.name).write_text(p.read_text())
    victim = sorted(copy.glob("*.json"))[0]
    victim.write_text("{not json")
    with pytest.raises(RuntimeError, match="corrupt"):
        _board(model, x, y, ResultCache(copy))


def test_json_export_round_trips(first, tmp_path):
    board, _ = first
    table = board.table()
    paths = export_board(table, tmp_path, protocol=protocol_dict(PROTOCOL), dataset="shapes10", code_version="abc")
    back = load_board_json(tmp_path)
    for column in ("rank", "name", "clean (%)", "adaptive (%)", "sanity", "gap (points)", "collapsed"):
        expected = table.sort_values(["target", "rank"]).reset_index(drop=True)[column]
        if expected.dtype.kind == "f":
            np.testing.assert_allclose(back[column].astype(float), expected.astype(float), equal_nan=True)
        else:
            assert list(back[column]) == list(expected), column
    info = json.loads((tmp_path / "json" / "natural" / "jpeg.json").read_text())
    assert info["code_version"] == "abc" and info["threat_model"] == "Linf" and info["settings"]["n_eval"] == 12
    assert paths["markdown"].read_text().startswith("| rank") and "planted control" in board_markdown(table)


def test_too_few_images_is_an_error_before_any_work(shapes_model):
    model, x, y = shapes_model
    with pytest.raises(ValueError, match="n_eval"):
        Leaderboard(model, {"hash": "t"}, "t", model, {"hash": "s"}, x[:4], y[:4], PROTOCOL, dataset="shapes10")


@pytest.mark.parametrize("name", sorted(CLAIMED))
def test_every_claimed_number_is_one_row_of_the_reference_data(name):
    assert name in DEFENSES
    found = claimed(name)
    assert 0 <= found["claimed (%)"] <= 100 and found["claimed setting"]


def test_a_defense_without_a_claimed_number_shows_none():
    found = claimed("median")
    assert np.isnan(found["claimed (%)"]) and found["claimed setting"] == ""


def test_autoattack_is_left_out_behind_a_purifier_slower_than_the_protocol_allows(shapes_model, tmp_path):
    model, x, y = shapes_model
    protocol = dataclasses.replace(PROTOCOL, autoattack_max_ms=1e-9)  # every real purifier is slower than this
    board = Leaderboard(model, {"hash": "t"}, "natural", model, {"hash": "s"}, x, y, protocol, dataset="shapes10",
                        cache=ResultCache(tmp_path))
    d = get_defense("jpeg", "shapes10", "smoke", 0, device="cpu")
    board.register("jpeg", d.record, display_name="JPEG", kind="transform")
    board.add_shared({"jpeg": (d.purifier, model)})
    cells = board.add("jpeg", d.purifier, model)
    assert "autoattack" not in cells and board.table().loc[0, "autoattack"].startswith("— (purifier")
