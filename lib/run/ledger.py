"""The claims ledger: every paper's claims, as its notebooks decided them, in one table with one vocabulary.

    from lib.run.ledger import claims_ledger, ledger_counts, ledger_markdown
    ledger = claims_ledger("quick")        # papermill_runs/quick/results/<notebook>/<table>.csv
    ledger_counts(ledger)                  # per paper: how many claims got each verdict
    print(ledger_markdown(ledger))         # both as Markdown; table_ledger(path) reads one table

Each paper notebook writes its claims tables in one of a few shapes, each with its own words for a verdict
("yes", True, "told apart", counts of cells). Read one by one they cannot be compared or totalled; the ledger
reads every table of CLAIM_FILES into rows `paper, notebook, table, claim, paper's numbers, ours, verdict,
detail` with `verdict` one of VERDICTS:

- claim_line rows (`claim`, `holds here`): "yes" → holds, "no" → does not hold, "cannot tell..." → cannot tell
  at this size, "no verdict..." / "not checked..." → no verdict (the text kept in `detail`).
- trend rows (hgd `summary`, `holds here` True/False): True → holds, False → does not hold.
- count rows (columns ending "above", "below", "cannot tell"; one ledger row per table row): every cell above →
  holds; none above and some below → does not hold; some above and some below → mixed; otherwise (cells not
  told apart, none below) → cannot tell at this size, even when most are above ("7 of 9 above, 2 not told
  apart"): a claim over every cell is not shown by most of them. Missing counts (a collapsed baseline) or no
  cell at all (smoke scale counts nothing) → no verdict, detail from `note`. impure_ablations counts "first
  above second"; where the paper says the opposite (Fig. 8: the extra layer hurts on MI-, DI-, MD-FGSM; Table 3:
  training on three attacks loses nothing against training on all nine) the counts are read swapped.
- dir `degradation`: the paper's direction per denoiser comes from its own numbers ("28.65 vs 45.72": APE-GAN,
  HGD, NRP, JATP lower the adversarially trained target's PGD accuracy, DIR raises it): same direction with
  the intervals apart → holds, the other direction apart → does not hold, intervals overlapping → cannot tell.
- impure `claim_d` (Section 3.1: a global and a random local reduction of the perturbation have the same
  effect): told apart → does not hold; not told apart → cannot tell at this size, never holds: overlapping
  intervals are what equality predicts but do not show it (that needs an equivalence test, which none runs).
- idfr `claim_c` (the paper reports accuracy under attack above clean accuracy): a listed cell beyond the noise
  → holds, within it → cannot tell; an empty table (no cell above its clean accuracy at all, not even within
  the noise) → one row, does not hold.
- at smoke scale every verdict is "no verdict": the notebooks conclude nothing there.

A missing table is an error naming the file and the command that writes it; a table in no known shape is an
error naming its columns: a ledger that silently skips a table would count claims that were never read.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import pandas as pd

from lib.core.provenance import REPO
from lib.core.settings import SCALES

VERDICTS = ("holds", "does not hold", "cannot tell at this size", "mixed", "no verdict")
COLUMNS = ["paper", "notebook", "table", "claim", "paper's numbers", "ours", "verdict", "detail"]

# notebook -> (paper, its claims tables); the sanity-check tables are checks of our evaluation, not claims
CLAIM_FILES = {
    "hgd": ("HGD", ("summary",)),
    "dir": ("DIR", ("degradation",)),
    "dir_ablations": ("DIR", ("trends",)),
    "dir_adaptive": ("DIR", ("claims",)),
    "idfr": ("IDFR", ("claim_a", "claim_b", "claim_c", "claim_d")),
    "impure": ("IMPure", ("claim_a", "claim_b", "claim_c", "claim_d", "claim_e", "claim_f")),
    "impure_ablations": ("IMPure", ("claims",)),
    "rdp": ("RDP", ("claim_a", "claim_b", "claim_c", "claim_d", "claim_e", "claim_f", "claim_h")),
}
# count tables whose rows name no second: what the first is compared with
_VERSUS = {("impure", "claim_a"): "no defense"}
_CLAIM_META = ("claim", "paper", "holds here")


def _text_verdict(text, where: str) -> str:
    text = str(text).strip()
    if text in ("yes", "True", "true"):
        return "holds"
    if text in ("no", "False", "false"):
        return "does not hold"
    if text.startswith("cannot tell"):
        return "cannot tell at this size"
    if text.startswith(("no verdict", "not checked")):
        return "no verdict"
    raise ValueError(f"{where}: unknown verdict {text!r}")


def _given(v) -> bool:
    return not (v is None or (isinstance(v, float) and pd.isna(v)) or str(v).strip() in ("", "-", "nan"))


def _extras(row: pd.Series, skip) -> str:
    return "; ".join(f"{c}: {row[c]}" for c in row.index if c not in skip and _given(row[c]))


def _line(claim, paper, ours, verdict, detail="") -> dict:
    return {"claim": claim, "paper's numbers": paper if _given(paper) else "", "ours": ours, "verdict": verdict,
            "detail": detail}


def _claim_lines(df: pd.DataFrame, where: str, key) -> list[dict]:
    named = [c for c in ("ours (first)", "ours (second)", "ours") if c in df]
    ours_cols = named or [c for c in df if c not in _CLAIM_META and "(points)" not in c and c != "intervals apart"]
    out = []
    for i, row in df.iterrows():
        parts = [str(row[c]) if named else f"{c} {row[c]}" for c in ours_cols if _given(row[c])]
        verdict = _text_verdict(row["holds here"], f"{where}, row {i}")
        extra = _extras(row, set(_CLAIM_META) | set(ours_cols))
        detail = "; ".join(d for d in (str(row["holds here"]) if verdict == "no verdict" else "", extra) if d)
        out.append(_line(row["claim"], row.get("paper"), " vs ".join(parts), verdict, detail))
    return out


def _trends(df: pd.DataFrame, where: str, key) -> list[dict]:
    return [_line(row["paper trend"], "", row.get("numbers", ""), _text_verdict(row["holds here"], f"{where}, row {i}"),
                  "" if str(row["holds here"]) in ("True", "False") else str(row["holds here"]))
            for i, row in df.iterrows()]


def _degradation(df: pd.DataFrame, where: str, key) -> list[dict]:
    out = []
    for _, row in df.iterrows():
        numbers = [float(v) for v in re.findall(r"\d+(?:\.\d+)?", str(row["paper (CIFAR-10)"]))[:2]]
        # the paper's direction from its own numbers; without them its text: DIR raises, the others degrade
        paper_raises = numbers[0] > numbers[1] if len(numbers) == 2 else row["defense"] == "DIR"
        direction = "raises" if paper_raises else "lowers"
        ours_raises = str(row["direction"]) in ("raises", "improves")
        verdict = ("cannot tell at this size" if row["intervals apart"] != "yes"
                   else "holds" if ours_raises == paper_raises else "does not hold")
        ours = f"{row['PGD behind the denoiser']} vs {row['target alone']} alone ({row['change (points)']:+} points)"
        out.append(_line(f"{row['defense']} ({row['threat model']}) {direction} the adversarially trained target's "
                         f"white-box PGD accuracy", row["paper (CIFAR-10)"], ours, verdict,
                         f"ours {row['direction']}, intervals apart: {row['intervals apart']}"))
    return out


def _told_apart(df: pd.DataFrame, where: str, key) -> list[dict]:
    return [_line(f"{row['attack']}, s = {row['s']}: global and local reduction give the same accuracy", "",
                  f"global {100 * row['global']:.1f}% vs local {100 * row['local']:.1f}%",
                  "does not hold" if row["told apart"] == "yes" else "cannot tell at this size",
                  "told apart" if row["told apart"] == "yes" else
                  "not told apart: consistent with equality, which overlapping intervals cannot show")
            for _, row in df.iterrows()]


def _above_clean(df: pd.DataFrame, where: str, key) -> list[dict]:
    if df.empty:
        return [_line("some defense's accuracy under attack is above its clean accuracy (Table 1)", "", "no such cell",
                      "does not hold", "no defense and attack is above its clean accuracy here, not even within noise")]
    return [_line(f"{row['defense']} under {row['attack']} at {row['eps (/255)']}/255 above its clean accuracy", "",
                  f"{100 * row['under attack']:.1f}% vs clean {100 * row['clean']:.1f}%",
                  "holds" if row["beyond noise"] == "yes" else "cannot tell at this size",
                  f"beyond noise: {row['beyond noise']}") for _, row in df.iterrows()]


def count_verdict(above, below, cannot) -> tuple[str, str]:
    """(verdict, detail) of one count row: cells where the first is above the second, below it, not told apart."""
    if any(pd.isna(v) for v in (above, below, cannot)):
        return "no verdict", "counts missing"
    a, b, c = int(above), int(below), int(cannot)
    n = a + b + c
    if n == 0:
        return "no verdict", "no cell compared"
    if a == n:
        return "holds", f"{a} of {n} above"
    if a and b:
        return "mixed", f"{a} above, {b} below, {c} not told apart, of {n}"
    if b:
        return "does not hold", f"{b} of {n} below, {c} not told apart"
    return "cannot tell at this size", f"{a} of {n} above, {c} not told apart"


def _counts(df: pd.DataFrame, where: str, key) -> list[dict]:
    cols = list(df.columns)
    up = next(c for c in cols if c.endswith(" above") or " above," in c)  # "IMPure above", "IDFR above, beyond noise"
    down = next(c for c in cols if c.endswith(" below"))
    labels = cols[:cols.index(up)]  # the labels come first, notes and means after the counts
    named = ("first", "second", "baseline", "ablation", "target", "columns")
    out = []
    for _, row in df.iterrows():
        first = str(row["first"]) if up == "first above" and "first" in row else up.split(" above")[0]
        second = (row["second"] if "second" in row else row["baseline"] if "baseline" in row
                  else f"{first} {row['ablation']}" if "ablation" in row else _VERSUS.get(key, "the second"))
        second = "no defense" if second == "None" else str(second)
        a, b = row[up], row[down]
        # impure_ablations: where the paper says the first is below the second, read the counts the other way
        swapped = row.get("figure") == "Table 3" or (
            row.get("figure") == "Fig. 8" and str(row.get("columns", "")).startswith("mifgsm"))
        if swapped:
            first, second, a, b = second, first, b, a
        rest = [str(row[c]) if c == "figure" else f"{c} {row[c]}" for c in labels if c not in named]
        claim = (f"{first} above {second}" + (f" on {row['target']}" if "target" in row else "")
                 + (f" ({', '.join(rest)})" if rest else ""))
        verdict, detail = count_verdict(a, b, row["cannot tell"])
        skip = set(labels) - {"columns"} | {up, down, "cannot tell"}
        if verdict == "no verdict" and _given(row.get("note")):
            detail, skip = str(row["note"]), skip | {"note"}
        notes = [detail, _extras(row, skip), "the paper says the first is below here: counts read swapped" * swapped]
        ours = "" if pd.isna(a) else f"{int(a)} above / {int(b)} below / {int(row['cannot tell'])} cannot tell"
        out.append(_line(claim, "", ours, verdict, "; ".join(d for d in notes if d)))
    return out


def _reader(columns: Sequence[str]):
    cols = set(columns)
    for needed, reader in ((("paper trend", "holds here"), _trends), (("claim", "holds here"), _claim_lines),
                           (("defense", "direction", "intervals apart", "paper (CIFAR-10)"), _degradation),
                           (("global", "local", "told apart"), _told_apart),
                           (("under attack", "clean", "beyond noise"), _above_clean)):
        if set(needed) <= cols:
            return reader
    if "cannot tell" in cols and any(c.endswith(" below") for c in cols) and any(
            c.endswith(" above") or " above," in c for c in cols):
        return _counts
    return None


def table_ledger(path, paper: str = "", notebook: str = "", scale: str = "quick") -> pd.DataFrame:
    """The ledger rows of one claims table (a CSV in any of the module's shapes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"claims table {path} is missing: run the notebook "
                                f"(python -m lib.run.reproduce --scale {scale} --only {notebook or path.parent.name})")
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values=[""])  # a baseline named "None" stays a name
    except pd.errors.EmptyDataError:
        raise ValueError(f"claims table {path} is empty (not even a header)") from None
    reader = _reader(df.columns)
    if reader is None:
        raise ValueError(f"claims table {path} has columns {list(df.columns)}, which match no known claims format")
    return pd.DataFrame([{"paper": paper, "notebook": notebook, "table": path.stem, **line}
                         for line in reader(df, str(path), (notebook, path.stem))], columns=COLUMNS)


def claims_ledger(scale: str = "quick", results_root=None, *, only: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per claim of every table in CLAIM_FILES (`only`: these notebooks), read from `results_root`
    (default papermill_runs/<scale>/results). The verdict rules are the module docstring's."""
    if results_root is None and scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}: choose one of {sorted(SCALES)}")
    root = Path(results_root or REPO / "papermill_runs" / scale / "results")
    if not root.is_dir():
        raise FileNotFoundError(f"no results folder {root} for scale {scale!r}: run "
                                f"python -m lib.run.reproduce --scale {scale}")
    unknown = set(only or ()) - set(CLAIM_FILES)
    if unknown:
        raise ValueError(f"notebooks {sorted(unknown)} have no claims tables; known: {list(CLAIM_FILES)}")
    frames = [table_ledger(root / notebook / f"{stem}.csv", paper, notebook, scale)
              for notebook, (paper, stems) in CLAIM_FILES.items() if only is None or notebook in only for stem in stems]
    ledger = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    if scale == "smoke":  # the notebooks conclude nothing at smoke: neither does the ledger
        ledger["detail"] = ("not checked at smoke; " + ledger["detail"]).str.rstrip("; ")
        ledger["verdict"] = "no verdict"
    return ledger


def ledger_counts(ledger: pd.DataFrame) -> pd.DataFrame:
    """Per paper (in CLAIM_FILES' order), how many claims got each verdict, and the total."""
    papers = list(dict.fromkeys([p for p, _ in CLAIM_FILES.values()] + list(ledger["paper"])))
    counts = pd.crosstab(ledger["paper"], ledger["verdict"]).reindex(
        index=[p for p in papers if p in set(ledger["paper"])], columns=list(VERDICTS), fill_value=0)
    counts.columns.name = None
    counts["total"] = counts.sum(axis=1)
    return counts


def counts_markdown(ledger: pd.DataFrame) -> str:
    """`ledger_counts` as a Markdown table (the README's copy is checked against it by tests/test_ledger.py)."""
    return ledger_counts(ledger).reset_index().to_markdown(index=False)


def ledger_markdown(ledger: pd.DataFrame) -> str:
    """The per-paper counts, then the whole ledger, as Markdown tables."""
    cells = ledger.astype(str).apply(lambda col: col.str.replace("|", "\\|", regex=False))  # a | would split a cell
    return ("## Verdicts per paper\n\n" + counts_markdown(ledger)
            + "\n\n## Claims\n\n" + cells.to_markdown(index=False) + "\n")
