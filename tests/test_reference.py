"""lib.core.reference: the papers' numbers as data files, one reader, checked against the paper texts."""
import csv
import math
import os
import re
from pathlib import Path

import pytest

from lib.core import reference as R

REPO = Path(__file__).resolve().parents[1]
FILES = sorted((REPO / "lib" / "reference").glob("*/*.csv"))
UNITS = {"%", "L1", "ms", "× pre-trained"}
# the paper texts (papers/README.md): one file per paper, beside the design notes
PAPERS = Path(os.environ.get("PURIFY_PAPERS", REPO.parent / "shared" / "papers"))
PAPER_TEXT = {"hgd": "003_76912749f819b266.txt", "dir": "000_dfa32c6a711fe26a.txt", "idfr": "001_7e4ecf4c826261f3.txt",
              "impure": "002_efc2d8bb8197384c.txt"}
# IDFR prints one line per defense across targets (or datasets): VGG16 and ResNet18 side by side in each cell
LINE_SPANS = {"idfr": ("target", "dataset")}
# tables printed transposed (one line per attack, the defenses side by side): the columns that name a printed line
LINE_KEYS = {"impure/table3": ("target", "attack")}


def test_every_file_is_package_data_and_reads():
    assert FILES, "no reference files"
    assert (REPO / "lib" / "reference" / "__init__.py").exists()  # a package, so the package data installs
    assert '"lib.reference" = ["*/*.csv"]' in (REPO / "pyproject.toml").read_text()
    assert R.papers() == sorted({p.parent.name for p in FILES})
    for path in FILES:
        frame = R.paper_numbers(path.parent.name, path.stem)
        assert len(frame) == sum(1 for _ in open(path)) - 1, path
        assert set(frame.unit) <= UNITS, (path, set(frame.unit) - UNITS)
        assert frame.value.notna().all()
        assert (frame.paper.str.upper() == path.parent.name.upper()).all(), path  # IMPure as the paper spells it
        assert frame.table.str.len().gt(0).all() and frame.page.str.len().gt(0).all(), path


def test_row_counts_and_a_few_cells():
    assert len(R.paper_numbers("hgd")) == 85
    assert len(R.paper_numbers("dir")) == 130
    assert len(R.paper_numbers("idfr")) == 676
    assert len(R.paper_numbers("impure")) == 156
    t2 = R.reference_table("hgd", "table2", index="defense", columns=["test_set", "eps"], metric="accuracy")
    assert t2.loc["NA", ("clean", 0.0)] == 76.7
    assert t2.loc["DUNET", ("white", 4 / 255)] == 20.0
    loss = R.reference_table("hgd", "Table 2", index="defense", columns="test_set", metric="denoising loss",
                             eps=16 / 255)
    assert loss.loc["DAE", "black"] == 0.0369
    t1 = R.reference_table("dir", "table1", index=["dataset", "defense"], columns="attack")
    assert list(t1.columns) == ["none", "pgd", "autoattack", "mifgsm", "vnifgsm"]  # the paper's order
    assert list(t1.index.get_level_values("defense")[:6]) == ["None", "APE-GAN", "HGD", "NRP", "JATP", "DIR"]
    assert t1.loc[("CIFAR-10", "DIR"), "pgd"] == 54.27 and t1.loc[("SVHN", "None"), "autoattack"] == 45.16
    im1 = R.reference_table("impure", "table1", index=["target", "defense"], columns="attack")
    assert list(im1.columns) == ["none", "fgsm", "cw", "deepfool", "pgd", "mifgsm", "difgsm", "mdfgsm", "apgd_ce",
                                 "apgd_dlr"]
    assert im1.loc[("IncRes", "Defense"), "mdfgsm"] == 60.74 and im1.loc[("ResNet", "No defense"), "none"] == 100.0
    im2 = R.reference_table("impure", "table2", index="defense", columns="attack", eps=16 / 255)
    assert list(im2.index) == ["Attack", "Random", "PD+WD", "WD+SR", "ComDefend", "Recon", "DIR", "Ours"]
    assert im2.loc["Recon", "apgd_dlr"] == 67.66 and im2.loc["Ours"].equals(im1.loc[("IncV3", "Defense")].drop("none"))
    im3 = R.reference_table("impure", "table3", index="attack", columns="defense")
    assert im3.loc["mdfgsm", "Defense"] == 47.46 and im3.loc["pgd", "No Defense"] == 0.74
    assert R.paper_numbers("impure", "table3").query("agnostic").attack.tolist()[::2] == [
        "difgsm", "mdfgsm", "apgd_ce", "apgd_dlr"]


def test_tables_by_label_and_typed_columns():
    assert R.paper_numbers("DIR", "Table 1").equals(R.paper_numbers("dir", "table1"))
    eq9 = R.paper_numbers("dir", "Section 4.2 (Eq. 9)")  # a label inside section4_2.csv
    assert sorted(eq9.defense) == ["DIR", "JATP"]
    assert eq9.step_size.tolist() == [2 / 255, 2 / 255]
    ablation = R.paper_numbers("dir", "section4_3")
    assert ablation.pretrain.dtype == bool and set(ablation.mask_ratio) == {0.3, 0.5, 0.7}
    assert R.paper_numbers("dir", "table5").encoder_depth.tolist()[:2] == [4, 4]


def test_unknown_names_list_what_there_is():
    with pytest.raises(KeyError, match=r"available: \['dir', 'hgd', 'idfr', 'impure', 'rdp'\]"):
        R.paper_numbers("nope")
    with pytest.raises(KeyError, match=r"available: \['section4_2'.*'table5'\]"):
        R.paper_numbers("dir", "table9")
    with pytest.raises(ValueError, match="several numbers per cell"):
        R.reference_table("hgd", "table2", index="defense", columns="test_set")
    with pytest.raises(LookupError, match="No numbers"):
        R.reference_table("hgd", "table2", index="defense", columns="test_set", metric="nothing")


def test_malformed_files_are_errors(tmp_path, monkeypatch):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "t.csv").write_text("paper,table,page,defense,value,unit,note\nX,T,1,a,1.0,%,\nX,T,1,a,2.0,%,\n")
    (tmp_path / "x" / "u.csv").write_text("paper,table,value,unit,note\nX,T,1.0,%,\n")
    (tmp_path / "x" / "v.csv").write_text("paper,table,page,value,unit,note\nX,T,1,n/a,%,\n")
    monkeypatch.setattr(R, "_root", lambda: tmp_path)
    R._read.cache_clear()
    try:
        with pytest.raises(ValueError, match="same keys"):
            R.paper_numbers("x", "t")
        with pytest.raises(ValueError, match=r"lacks the columns \['page'\]"):
            R.paper_numbers("x", "u")
        with pytest.raises(ValueError, match="non-numeric value on lines \\[2\\]"):
            R.paper_numbers("x", "v")
    finally:
        R._read.cache_clear()


@pytest.mark.skipif(not PAPERS.exists(), reason="the paper texts are not here (set PURIFY_PAPERS)")
@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_number_is_printed_in_the_paper(path):
    """Each value, as written in the CSV, appears in the paper's text (times of 291000 ms as '291k'), and each
    table's numbers appear in the order of the file (row by row), so a typo or a swapped cell fails."""
    text = (PAPERS / PAPER_TEXT[path.parent.name]).read_text()
    rows = list(csv.DictReader(open(path)))
    printed = [r["value"][:-3] + "k" if r["unit"] == "ms" else r["value"] for r in rows]
    missing = [v for v in printed if v not in text]
    assert not missing, f"{path.name}: not in the paper text: {missing}"
    if path.stem.startswith("table"):  # a table's lines: consecutive values of one row label, in order
        by_line = {}
        for r, v in zip(rows, printed):
            line_keys = LINE_KEYS.get(f"{path.parent.name}/{path.stem}")
            key = tuple(r[k] for k in line_keys) if line_keys else tuple(
                r[k] for k in r if k not in ("value", "note", "attack", "threat_model", "eps", "steps", "test_set",
                                             "unit", *LINE_SPANS.get(path.parent.name, ())))
            by_line.setdefault(key, []).append(v)
        for key, values in by_line.items():  # between two cells: spaces, %, IDFR's a/b/c triples and bold tags
            assert re.search(r"(?:[%\s/]|</?b>)+".join(map(re.escape, values)), text), (path.name, key, values)
    assert all(math.isfinite(float(r["value"])) for r in rows)


# RDP (Bai et al.): its text prints Table 1 column by column (the nine baselines of one source and attack in a run)
# and RDP's row apart, and Table 2 in two lines of five defenses with the second line's names between the first
# line's numbers; the generic line check sees single cells there, and test_rdp_tables_are_printed_in_the_files_order
# checks those layouts. Table 3 is printed one column (source, defense) at a time; Table 4 one defense at a time
PAPER_TEXT["rdp"] = "004_d03a1644c2319be6.txt"
LINE_KEYS.update({"rdp/table1": ("source", "attack", "defense"), "rdp/table2": ("defense",),
                  "rdp/table3": ("source", "defense", "threat_model")})


def test_rdp_row_counts_and_a_few_cells():
    assert len(R.paper_numbers("rdp")) == 229
    t1 = R.reference_table("rdp", "table1", index=["source", "defense"], columns="attack")
    assert list(t1.columns) == ["fgsm", "mifgsm", "mdfgsm", "tidim", "sinitidim", "average"]  # the paper's order
    assert list(t1.loc["source 1"].index) == ["JPEG", "FD", "Bit-Red", "TVM", "SR", "R&P", "ComDefend", "HGD", "NRP",
                                              "RDP"]
    assert t1.loc[("source 1", "HGD"), "fgsm"] == 3.2 and t1.loc[("Ensemble", "RDP"), "average"] == 14.9
    assert t1.loc[("Ensemble", "SR"), "average"] == 61.7  # the abstract's "from 61.7% to 14.9%"
    assert "source 2" not in set(R.paper_numbers("rdp", "table1").query("defense == 'RDP'").source)  # lost
    t2 = R.reference_table("rdp", "table2", index="defense", columns="metric")
    assert t2.loc["None", "accuracy"] == 97.6 and t2.loc["ComDefend", "accuracy"] == 90.5
    t3 = R.reference_table("rdp", "table3", index="target", columns=["source", "defense"])
    assert t3.loc["IncRes-v2ens", ("ResNet-152 + NRP", "RDP")] == 79.2 and t3.loc["Inc-v3", ("ResNet-152", "None")] == 37.1
    t4 = R.reference_table("rdp", "table4", index="defense", columns="attack")
    assert list(t4.index) == ["N/A", "AT-FD", "NRP", "RDP"] and t4.loc["RDP", "pgd_targeted"] == 71.3


def test_rdp_averages_are_the_mean_of_the_five_attacks():
    frame = R.paper_numbers("rdp", "table1")
    for (source, defense), part in frame.groupby(["source", "defense"]):
        values = part.set_index("attack").value
        if "average" in values and len(values) == 6:
            assert abs(values.drop("average").mean() - values["average"]) <= 0.06, (source, defense)


@pytest.mark.skipif(not PAPERS.exists(), reason="the paper texts are not here (set PURIFY_PAPERS)")
def test_rdp_tables_are_printed_in_the_files_order():
    text = (PAPERS / PAPER_TEXT["rdp"]).read_text()
    between = r"(?:[%\s/↑]|</?b>)+"
    rows = list(csv.DictReader(open(REPO / "lib" / "reference" / "rdp" / "table1.csv")))
    lines = {}
    for r in rows:  # baselines: one printed column per (source, attack); RDP: one printed row per source
        key = (r["source"], "RDP") if r["defense"] == "RDP" else (r["source"], r["attack"])
        lines.setdefault(key, []).append(r["value"])
    for key, values in lines.items():
        assert len(values) in (6, 9), key
        assert re.search(between.join(map(re.escape, values)), text), key
    rows = list(csv.DictReader(open(REPO / "lib" / "reference" / "rdp" / "table2.csv")))
    printed = [r["value"] for r in rows if r["defense"] != "None"]
    names = r"(?:[%\s↑]|R&P|ComDefend|HGD|NRP|RDP)+"  # the second line's defense names sit inside the first's
    for half in (printed[:5], printed[5:]):  # Table 2's two printed lines
        assert re.search(names.join(map(re.escape, half)), text), half
