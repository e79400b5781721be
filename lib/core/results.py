"""Result rows: one dict per (defense, classifier, dataset, threat model, attack, ε) evaluation.

Every notebook builds its tables from these rows and keeps them as CSV, so numbers can be compared
across notebooks and runs. Accuracy is a fraction with a 95% Wilson interval (scipy).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd
from scipy.stats import binomtest

COLUMNS = ("defense", "classifier", "dataset", "threat_model", "attack", "eps", "steps", "step_size", "n",
           "accuracy", "ci_low", "ci_high", "seed", "seconds")


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (nan, nan when n == 0)."""
    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def result_row(*, defense: str, classifier: str, dataset: str, threat_model: str, attack: str, eps: float,
               steps: int, step_size: float, correct: int, n: int, seed: int, seconds: float, **extra) -> dict:
    """A result row with every standard column; extra keyword arguments become extra columns."""
    low, high = wilson_interval(correct, n)
    row = {"defense": defense, "classifier": classifier, "dataset": dataset, "threat_model": threat_model,
           "attack": attack, "eps": float(eps), "steps": int(steps), "step_size": float(step_size), "n": int(n),
           "accuracy": correct / n if n else float("nan"), "ci_low": low, "ci_high": high, "seed": int(seed),
           "seconds": float(seconds)}
    row.update(extra)
    return row


def accuracy_with_interval(row) -> str:
    """'54.0% [44.3, 63.4]': a row's accuracy and its 95% Wilson interval in percent (dict or DataFrame row)."""
    return f"{100 * row['accuracy']:.1f}% [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"


def intervals_apart(a, b) -> bool:
    """Whether two rows' 95% Wilson intervals do not overlap: a difference beyond sampling noise."""
    return a["ci_low"] > b["ci_high"] or b["ci_low"] > a["ci_high"]


def is_collapsed(natural_accuracy: float, n_classes: int) -> bool:
    """A defense whose natural accuracy is below twice chance has collapsed (e.g. its denoiser outputs a
    near-constant image): its accuracy under attack is then the luck of its one answer, not robustness."""
    return natural_accuracy < 2 / n_classes


def claim_line(claim: str, paper: str, a, b, *, checked: bool = True, collapsed=()) -> dict:
    """One line of a notebook's claims table: does row a beat row b beyond the sampling noise?

    `holds here` is "yes" (a above b, intervals apart), "no" (b at or above a, intervals apart) or "cannot tell
    at this size" (the 95% intervals overlap: more images are needed to decide). `± points` is the larger
    half-width of the two intervals (about 7 at 200 images near 50%). checked=False (smoke scale, where the
    numbers mean nothing) and a non-empty `collapsed` (the names of the collapsed models among the two) give
    no verdict.
    """
    apart = intervals_apart(a, b)
    line = {"claim": claim, "paper": paper, "ours (first)": accuracy_with_interval(a),
            "ours (second)": accuracy_with_interval(b),
            "holds here": ("yes" if a["accuracy"] > b["accuracy"] else "no") if apart else "cannot tell at this size",
            "intervals apart": "yes" if apart else "no", "± points": round(100 * max(half_width(a), half_width(b)), 1)}
    if not checked:
        line.update({"holds here": "not checked at smoke", "intervals apart": "-"})
    elif collapsed:
        line.update({"holds here": f"no verdict: {' and '.join(collapsed)} collapsed", "intervals apart": "-"})
    return line


def half_width(row) -> float:
    """The larger distance from a row's accuracy to an end of its 95% interval (a fraction)."""
    return max(row["accuracy"] - row["ci_low"], row["ci_high"] - row["accuracy"])


def rows_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as a DataFrame with the standard columns first."""
    frame = pd.DataFrame(rows)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if rows and missing:
        raise ValueError(f"Result rows lack the standard columns {missing}; build them with result_row().")
    extra = [c for c in frame.columns if c not in COLUMNS]
    return frame[list(COLUMNS) + extra] if rows else pd.DataFrame(columns=COLUMNS)


def _replace_atomically(path: str | os.PathLike, write) -> Path:
    """Call write(temporary path) on a file beside `path`, then rename it over `path`: a crash never leaves half a
    file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o644)  # mkstemp files are private; results are shared
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_csv_atomic(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a CSV through a temporary file and a rename, so a crash never leaves half a table."""
    return _replace_atomically(path, lambda tmp: frame.to_csv(tmp, index=False))


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write a text file (JSON, Markdown) through a temporary file and a rename."""
    return _replace_atomically(path, lambda tmp: Path(tmp).write_text(text))
