"""Result rows, Wilson intervals and atomic CSV writes (lib.core.results)."""
import math

import pandas as pd
import pytest

from lib.core.results import COLUMNS, accuracy_with_interval, claim_line, intervals_apart, is_collapsed, result_row, rows_frame, wilson_interval, write_csv_atomic


def _row(**overrides) -> dict:
    args = dict(defense="none", classifier="resnet_small", dataset="shapes10", threat_model="standard",
                attack="pgd", eps=8 / 255, steps=20, step_size=2 / 255, correct=7, n=10, seed=0, seconds=1.5)
    args.update(overrides)
    return result_row(**args)


def test_result_row_has_every_column():
    row = _row()
    assert set(COLUMNS) <= set(row)
    assert list(row)[: len(COLUMNS)] == list(COLUMNS)
    assert row["accuracy"] == pytest.approx(0.7) and row["n"] == 10
    assert row["ci_low"] < 0.7 < row["ci_high"]


def test_result_row_extra_columns_and_types():
    row = _row(eps=0, steps=20.0, purifier_steps=3)
    assert row["purifier_steps"] == 3
    assert isinstance(row["eps"], float) and isinstance(row["steps"], int)


def test_result_row_without_images_is_nan():
    row = _row(correct=0, n=0)
    assert math.isnan(row["accuracy"]) and math.isnan(row["ci_low"]) and math.isnan(row["ci_high"])


@pytest.mark.parametrize("correct,n", [(0, 10), (10, 10), (3, 10), (50, 100), (1, 1)])
def test_wilson_interval_contains_the_estimate(correct, n):
    low, high = wilson_interval(correct, n)
    assert 0 <= low <= correct / n <= high <= 1
    assert low < high


def test_wilson_interval_edges_and_width():
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0, abs=1e-12)
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(1 - high)  # symmetric at p = 1/2
    narrow = wilson_interval(500, 1000)
    assert narrow[1] - narrow[0] < high - low  # more images, tighter interval
    wide = wilson_interval(5, 10, confidence=0.99)
    assert wide[0] < low and wide[1] > high
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_rows_frame_orders_columns():
    frame = rows_frame([_row(note="a"), _row(attack="fgsm", note="b")])
    assert list(frame.columns) == list(COLUMNS) + ["note"]
    assert len(frame) == 2
    empty = rows_frame([])
    assert list(empty.columns) == list(COLUMNS) and len(empty) == 0


def test_rows_frame_rejects_rows_lacking_columns():
    row = _row()
    del row["ci_low"], row["seconds"]
    with pytest.raises(ValueError, match=r"\['ci_low', 'seconds'\].*result_row"):
        rows_frame([row])
    with pytest.raises(ValueError, match="standard columns"):
        rows_frame([{"accuracy": 0.5}])


def test_write_csv_atomic_round_trips_without_temporaries(tmp_path):
    frame = rows_frame([_row(), _row(seed=1)])
    path = write_csv_atomic(frame, tmp_path / "deep" / "rows.csv")
    assert path == tmp_path / "deep" / "rows.csv"
    back = pd.read_csv(path)
    assert list(back.columns) == list(frame.columns) and len(back) == 2
    assert back["accuracy"].tolist() == pytest.approx(frame["accuracy"].tolist())
    assert [p.name for p in path.parent.iterdir()] == ["rows.csv"]
    write_csv_atomic(frame.head(1), path)  # overwrite in place
    assert len(pd.read_csv(path)) == 1
    assert [p.name for p in path.parent.iterdir()] == ["rows.csv"]


def test_write_csv_atomic_failure_keeps_old_file(tmp_path, monkeypatch):
    path = write_csv_atomic(rows_frame([_row()]), tmp_path / "rows.csv")
    before = path.read_bytes()

    def broken(self, target, *args, **kwargs):
        with open(target, "w") as f:
            f.write("defense,classif")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError, match="simulated"):
        write_csv_atomic(rows_frame([_row(seed=3)]), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["rows.csv"]


def test_accuracy_with_interval_reads_dicts_and_frame_rows():
    row = result_row(defense="d", classifier="c", dataset="s", threat_model="white-box", attack="pgd", eps=8 / 255,
                     steps=20, step_size=2 / 255, correct=27, n=50, seed=0, seconds=1.0)
    low, high = wilson_interval(27, 50)
    text = accuracy_with_interval(row)
    assert text == f"54.0% [{100 * low:.1f}, {100 * high:.1f}]"
    assert accuracy_with_interval(rows_frame([row]).iloc[0]) == text


def _scored(correct, n=100):
    return result_row(defense="d", classifier="c", dataset="s", threat_model="white-box", attack="pgd", eps=8 / 255,
                      steps=20, step_size=2 / 255, correct=correct, n=n, seed=0, seconds=1.0)


def test_intervals_apart_only_when_the_wilson_intervals_do_not_overlap():
    assert intervals_apart(_scored(80), _scored(50)) and intervals_apart(_scored(50), _scored(80))
    assert not intervals_apart(_scored(55), _scored(50))  # 5 points on 100 images is within noise


def test_is_collapsed_below_twice_chance():
    assert is_collapsed(0.13, 10) and not is_collapsed(0.20, 10) and not is_collapsed(0.86, 10)
    assert is_collapsed(0.45, 4) and not is_collapsed(0.55, 4)  # with 4 classes twice chance is 50%


def test_claim_line_verdicts():
    strong, weak = _scored(80), _scored(50)
    line = claim_line("a above b", "60 vs 40", strong, weak)
    assert line["holds here"] == "yes" and line["intervals apart"] == "yes"
    assert line["ours (first)"] == accuracy_with_interval(strong)
    assert claim_line("b above a", "-", weak, strong)["holds here"] == "no"
    close = claim_line("a above b", "-", _scored(52), _scored(50))
    assert close["holds here"] == "cannot tell at this size" and close["intervals apart"] == "no"
    assert 9 < close["± points"] < 11  # 100 images near 50%: about ±10 points
    smoke = claim_line("a above b", "-", strong, weak, checked=False)
    assert smoke["holds here"] == "not checked at smoke" and smoke["intervals apart"] == "-"
    broken = claim_line("a above b", "-", strong, weak, collapsed=["DIR"])
    assert broken["holds here"] == "no verdict: DIR collapsed" and broken["intervals apart"] == "-"
