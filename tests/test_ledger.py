"""The claims ledger (lib.run.ledger): on the kept quick results, and on small tables written here, one per format."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from lib.run.ledger import (CLAIM_FILES, COLUMNS, VERDICTS, claims_ledger, count_verdict, counts_markdown,
                            ledger_counts, ledger_markdown, table_ledger)

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "papermill_runs" / "quick" / "results"
CLAIM_STEMS = ("claims", "summary", "trends", "degradation")


@pytest.fixture(scope="module")
def quick():
    return claims_ledger("quick", results_root=QUICK)


def _write(folder: Path, name: str, rows: list[dict] | pd.DataFrame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _verdicts(path: Path) -> list[str]:
    return list(table_ledger(path)["verdict"])


# --- the kept quick results ---------------------------------------------------------------------------------------

def test_every_claims_table_of_the_quick_run_gives_rows(quick):
    assert list(quick.columns) == COLUMNS
    read = set(zip(quick["notebook"], quick["table"]))
    expected = {(nb, stem) for nb, (_, stems) in CLAIM_FILES.items() for stem in stems}
    assert read == expected, f"tables without a ledger row: {sorted(expected - read)}"
    for notebook, (paper, _) in CLAIM_FILES.items():
        assert set(quick.loc[quick.notebook == notebook, "paper"]) == {paper}


def test_quick_verdicts_are_the_vocabulary_and_the_counts_add_up(quick):
    assert set(quick["verdict"]) <= set(VERDICTS), set(quick["verdict"]) - set(VERDICTS)
    assert quick["claim"].map(lambda c: isinstance(c, str) and c.strip() != "" and "nan" not in c).all()
    counts = ledger_counts(quick)
    assert list(counts.columns) == [*VERDICTS, "total"]
    assert list(counts.index) == list(dict.fromkeys(paper for paper, _ in CLAIM_FILES.values()))
    assert (counts[list(VERDICTS)].sum(axis=1) == counts["total"]).all()
    assert counts["total"].sum() == len(quick)
    for paper, total in counts["total"].items():
        assert total == (quick.paper == paper).sum()


def test_no_claims_table_of_the_quick_run_is_left_out_of_claim_files():
    for notebook, (_, stems) in CLAIM_FILES.items():
        folder = QUICK / notebook
        assert folder.is_dir(), f"no kept quick results for {notebook} in {folder}"
        found = {p.stem for p in folder.glob("*.csv") if p.stem.startswith("claim") or p.stem in CLAIM_STEMS}
        assert found <= set(stems), f"{notebook}: claims tables {sorted(found - set(stems))} are not in CLAIM_FILES"


def test_the_markdown_has_the_counts_and_every_claim(quick):
    text = ledger_markdown(quick)
    assert text.index("Verdicts per paper") < text.index("## Claims")
    assert "| paper " in text and "does not hold" in text
    table = text.split("## Claims")[1]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == len(quick) + 1  # the header and one line a claim


# --- one small table per format -----------------------------------------------------------------------------------

@pytest.mark.parametrize("counts, verdict, detail", [
    ((9, 0, 0), "holds", "9 of 9 above"),
    ((0, 2, 0), "does not hold", "2 of 2 below"),
    ((0, 2, 7), "does not hold", "2 of 9 below, 7 not told apart"),
    ((3, 1, 5), "mixed", "3 above, 1 below"),
    ((7, 0, 2), "cannot tell at this size", "7 of 9 above, 2 not told apart"),
    ((0, 0, 4), "cannot tell at this size", "0 of 4 above"),
    ((0, 0, 0), "no verdict", "no cell"),
    ((math.nan, math.nan, math.nan), "no verdict", "missing"),
])
def test_count_verdict(counts, verdict, detail):
    got, text = count_verdict(*counts)
    assert got == verdict and detail in text


def test_a_count_table_names_the_first_from_its_header(tmp_path):
    path = _write(tmp_path / "impure", "claim_b", [
        {"baseline": "Random", "IMPure above": 7.0, "IMPure below": 0.0, "cannot tell": 2.0, "note": "clean 61.0%"},
        {"baseline": "PD+WD", "IMPure above": 9.0, "IMPure below": 0.0, "cannot tell": 0.0, "note": "clean 99.5%"},
        {"baseline": "PD", "IMPure above": 3.0, "IMPure below": 1.0, "cannot tell": 5.0, "note": ""},
        {"baseline": "DIR", "IMPure above": None, "IMPure below": None, "cannot tell": None,
         "note": "no verdict: DIR collapsed (clean 11.5%)"}])
    ledger = table_ledger(path, "IMPure", "impure")
    assert list(ledger["claim"]) == ["IMPure above Random", "IMPure above PD+WD", "IMPure above PD", "IMPure above DIR"]
    assert list(ledger["verdict"]) == ["cannot tell at this size", "holds", "mixed", "no verdict"]
    assert ledger["detail"][0].startswith("7 of 9 above, 2 not told apart")
    assert ledger["ours"][0] == "7 above / 0 below / 2 cannot tell"
    assert ledger["detail"][3] == "no verdict: DIR collapsed (clean 11.5%)"


def test_a_count_table_with_a_target_a_none_baseline_and_a_first_column(tmp_path):
    rdp = _write(tmp_path, "claim_a", [{"baseline": "None", "target": "ResNet-10", "RDP above": 0, "RDP below": 4,
                                        "cannot tell": 11}])
    assert table_ledger(rdp)["claim"][0] == "RDP above no defense on ResNet-10"
    assert _verdicts(rdp) == ["does not hold"]
    idfr = _write(tmp_path, "idfr_a", [{"baseline": "NRP", "IDFR above, beyond noise": 9, "IDFR below": 0,
                                        "cannot tell": 0, "mean accuracy IDFR / baseline": "0.7 / 0.8"}])
    assert table_ledger(idfr)["claim"][0] == "IDFR above NRP" and _verdicts(idfr) == ["holds"]
    ablations = _write(tmp_path, "claims", [
        {"figure": "Fig. 9", "first": "uniform", "second": "random", "columns": "none, fgsm", "first above": 2,
         "first below": 0, "cannot tell": 0},
        # Table 3: the paper says training on three attacks loses nothing: the counts are read the other way
        {"figure": "Table 3", "first": "all nine", "second": "three", "columns": "difgsm", "first above": 1,
         "first below": 0, "cannot tell": 0}])
    ledger = table_ledger(ablations)
    assert list(ledger["claim"]) == ["uniform above random (Fig. 9)", "three above all nine (Table 3)"]
    assert list(ledger["verdict"]) == ["holds", "does not hold"]


def test_claim_lines(tmp_path):
    texts = ["yes", "no", "cannot tell at this size", "no verdict: DIR collapsed", "not checked at smoke"]
    path = _write(tmp_path, "claim_x", [{"claim": f"c{i}", "paper": "54 vs 45", "ours (first)": "50%",
                                         "ours (second)": "-" if i else "40%", "holds here": t, "intervals apart": "-"}
                                        for i, t in enumerate(texts)])
    ledger = table_ledger(path)
    assert list(ledger["verdict"]) == ["holds", "does not hold", "cannot tell at this size", "no verdict", "no verdict"]
    assert ledger["detail"][3] == "no verdict: DIR collapsed" and ledger["detail"][4] == "not checked at smoke"
    assert ledger["ours"][0] == "50% vs 40%" and ledger["ours"][1] == "50%"
    assert (ledger["paper's numbers"] == "54 vs 45").all()


def test_trends_and_other_claim_lines(tmp_path):
    hgd = _write(tmp_path, "summary", [{"paper trend": "a", "holds here": True, "numbers": "1 vs 2"},
                                       {"paper trend": "b", "holds here": False, "numbers": "3"}])
    assert _verdicts(hgd) == ["holds", "does not hold"] and table_ledger(hgd)["ours"][0] == "1 vs 2"
    smoke = _write(tmp_path, "summary_smoke", [{"paper trend": "a", "holds here": "not checked at smoke scale",
                                                "numbers": "1"}])
    assert _verdicts(smoke) == ["no verdict"]
    mass = _write(tmp_path, "claim_e", [{"claim": "mass", "paper": "Fig. 6", "purified": 0.244, "adversarial": 0.255,
                                         "holds here": "cannot tell at this size"}])
    assert table_ledger(mass)["ours"][0] == "purified 0.244 vs adversarial 0.255"


def test_degradation_follows_the_papers_direction(tmp_path):
    row = {"threat model": "white-box", "PGD behind the denoiser": "7.0%", "target alone": "42.5%",
           "change (points)": -35.5}
    cases = [("APE-GAN", "degrades", "yes", "28.65 vs 45.72"), ("HGD", "degrades", "no", "18.07 vs 45.72"),
             ("NRP", "raises", "yes", "21.90 vs 45.72"), ("DIR", "raises", "yes", "54.27 vs 45.72"),
             ("DIR", "degrades", "yes", "54.27 vs 45.72")]
    path = _write(tmp_path, "degradation", [
        {**row, "defense": d, "direction": direction, "intervals apart": apart, "paper (CIFAR-10)": paper}
        for d, direction, apart, paper in cases])
    assert _verdicts(path) == ["holds", "cannot tell at this size", "does not hold", "holds", "does not hold"]
    assert "DIR (white-box) raises" in table_ledger(path)["claim"][3]


def test_told_apart_is_never_proof_of_equality(tmp_path):
    path = _write(tmp_path, "claim_d", [{"attack": "pgd", "s": 0.1, "global": 0.9, "local": 0.9, "told apart": "no"},
                                        {"attack": "pgd", "s": 0.7, "global": 0.3, "local": 0.6, "told apart": "yes"}])
    assert _verdicts(path) == ["cannot tell at this size", "does not hold"]


def test_accuracy_above_clean(tmp_path):
    columns = ["defense", "attack", "eps (/255)", "under attack", "clean", "beyond noise"]
    empty = _write(tmp_path, "claim_c", pd.DataFrame(columns=columns))
    assert _verdicts(empty) == ["does not hold"]
    listed = _write(tmp_path, "claim_c2", pd.DataFrame([["IDFR", "bim", 8, 0.92, 0.80, "yes"],
                                                        ["SOAP", "cw", 4, 0.91, 0.90, "no"]], columns=columns))
    assert _verdicts(listed) == ["holds", "cannot tell at this size"]


def test_smoke_gives_no_verdict_and_only_reads_the_named_notebooks(tmp_path):
    _write(tmp_path / "impure_ablations", "claims", [{"figure": "Fig. 9", "first": "u", "second": "r",
                                                      "columns": "none", "first above": 1, "first below": 0,
                                                      "cannot tell": 0}])
    quick = claims_ledger("quick", results_root=tmp_path, only=["impure_ablations"])
    assert list(quick["verdict"]) == ["holds"] and list(quick["paper"]) == ["IMPure"]
    smoke = claims_ledger("smoke", results_root=tmp_path, only=["impure_ablations"])
    assert list(smoke["verdict"]) == ["no verdict"] and smoke["detail"][0].startswith("not checked at smoke")


# --- errors -------------------------------------------------------------------------------------------------------

def test_a_missing_table_names_the_file_and_the_command(tmp_path):
    _write(tmp_path / "idfr", "claim_a", [{"baseline": "NRP", "IDFR above": 1, "IDFR below": 0, "cannot tell": 0}])
    with pytest.raises(FileNotFoundError, match=r"idfr/claim_b\.csv.*--scale quick --only idfr"):
        claims_ledger("quick", results_root=tmp_path, only=["idfr"])


def test_an_unknown_format_names_the_file_and_its_columns(tmp_path):
    path = _write(tmp_path / "rdp", "claim_z", [{"what": 1, "ever": 2}])
    with pytest.raises(ValueError, match=r"claim_z\.csv.*'what', 'ever'"):
        table_ledger(path)
    odd = _write(tmp_path, "claim_y", [{"claim": "c", "paper": "-", "holds here": "probably"}])
    with pytest.raises(ValueError, match=r"claim_y\.csv.*'probably'"):
        table_ledger(odd)


def test_an_unknown_scale_or_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match="'huge'"):
        claims_ledger("huge")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        claims_ledger("quick", results_root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="tour"):
        claims_ledger("quick", results_root=tmp_path, only=["tour"])


def test_the_readme_shows_the_current_verdict_counts():
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- ledger-counts -->\n")[1].split("\n<!-- /ledger-counts -->")[0]
    expected = counts_markdown(claims_ledger("quick"))
    assert block == expected, ("README.md's verdict counts are not the kept quick runs' ones: replace the block "
                               "between <!-- ledger-counts --> markers with the output of `python -c \"from "
                               "lib.run.ledger import *; print(counts_markdown(claims_ledger('quick')))\"`.\n"
                               + expected)
