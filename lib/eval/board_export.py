"""The leaderboard as files a researcher uses: a CSV, a Markdown table, and one JSON per defense and target.

    export_board(board, folder, protocol=protocol_dict(p), dataset="shapes10", code_version=git_revision())
    load_board_json(folder)        # the JSON files back as the board's columns (the round trip the tests check)

The JSON follows RobustBench's `model_info` files (name, paper, threat model, accuracies, settings, code version):
`<folder>/json/<target>/<name>.json`. Accuracies are in percent, as on the board.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from lib.core.results import write_csv_atomic, write_text_atomic

# JSON field -> board column
FIELDS = {
    "rank": "rank", "name": "name", "display_name": "defense", "kind": "kind", "paper": "citation",
    "target": "target", "surrogate": "surrogate", "n": "n", "clean_acc": "clean (%)",
    "oblivious_acc": "oblivious (%)", "transfer_acc": "transfer (%)", "adaptive_acc": "adaptive (%)",
    "adaptive_attack": "adaptive attack", "adaptive_mean_run_acc": "adaptive mean run (%)",
    "adaptive_majority_acc": "adaptive majority (%)", "autoattack_acc": "AutoAttack (%)",
    "autoattack_n": "AutoAttack n", "sanity": "sanity", "false_security_gap": "gap (points)",
    "collapsed": "collapsed", "purify_ms_per_image": "purify ms/image", "attack_seconds": "attack s",
    "claimed_acc": "claimed (%)", "claimed_setting": "claimed setting",
}
# the columns of the Markdown table (the intervals as text)
SHOWN = ["rank", "defense", "target", "clean", "oblivious", "transfer", "adaptive", "adaptive attack", "autoattack",
         "sanity", "gap (points)", "purify ms/image", "attack s", "claimed (%)", "claimed setting"]


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def board_markdown(board: pd.DataFrame) -> str:
    """The board as a Markdown table (accuracies with their 95% intervals)."""
    shown = board[[c for c in SHOWN if c in board.columns]].copy()
    for column in ("gap (points)", "purify ms/image", "attack s", "claimed (%)"):
        if column in shown:
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
    return shown.to_markdown(index=False, disable_numparse=True)  # keep the one-decimal text as written


def export_board(board: pd.DataFrame, folder: str | os.PathLike, *, protocol: dict, dataset: str, code_version: str,
                 header: str = "") -> dict[str, Path]:
    """Write board.csv, board.md (header + table) and one JSON per (target, defense); returns the paths."""
    folder = Path(folder)
    csv = write_csv_atomic(board.drop(columns=[c for c in board.columns if c.endswith(" ci")]), folder / "board.csv")
    md = folder / "board.md"
    write_text_atomic((header + "\n\n" if header else "") + board_markdown(board) + "\n", md)
    for _, row in board.iterrows():
        info = {field: _plain(row[column]) for field, column in FIELDS.items() if column in row.index}
        info.update({"dataset": dataset, "threat_model": "Linf", "eps": protocol["eps"], "settings": protocol,
                     "code_version": code_version})
        write_text_atomic(json.dumps(info, indent=1, sort_keys=True, allow_nan=False),
                          folder / "json" / str(row["target"]) / f"{row['name']}.json")
    return {"csv": csv, "markdown": md, "json": folder / "json"}


def load_board_json(folder: str | os.PathLike) -> pd.DataFrame:
    """The JSON files of `export_board` as a frame with the board's column names, ranked as written."""
    paths = sorted(Path(folder, "json").glob("*/*.json"))
    if not paths:
        raise FileNotFoundError(f"No leaderboard JSON under {Path(folder, 'json')}: run the leaderboard notebook "
                                "(python -m lib.run.reproduce --only leaderboard) or export_board first.")
    rows = []
    for path in paths:
        try:
            info = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}): delete it and export the board again.") from err
        rows.append({column: (float("nan") if info.get(field) is None and column.endswith("(%)") else info.get(field))
                     for field, column in FIELDS.items()})
    return pd.DataFrame(rows).sort_values(["target", "rank"]).reset_index(drop=True)
