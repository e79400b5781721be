"""lib.eval.protocols: the defenses × attacks protocol, batched purification, and the tables built from rows."""
import pandas as pd
import pytest
import torch

from lib.attacks.attack_sets import AdversarialSet
from lib.core.results import rows_frame, result_row
from lib.core.settings import get_scale
from lib.defenses import dir_denoiser
from lib.defenses.transforms import BitDepthReduction, GaussianNoise
from lib.eval import protocols as P
from lib.eval.evaluation import clean_row, evaluate, evaluate_oblivious
from lib.eval.stored_sets import evaluate_test_sets

SMOKE = get_scale("smoke")


# ----------------------------------------------------------------------------------------------- sizes, purifying
def test_check_n_eval_defaults_and_rejects_bad_sizes():
    assert P.check_n_eval(None, SMOKE) == SMOKE.n_eval
    assert P.check_n_eval(None, SMOKE, default=16) == 16
    assert P.check_n_eval(5, SMOKE, default=16) == 5
    for bad in (0, SMOKE.n_eval + 1, 2.0, "8", True):
        with pytest.raises(ValueError, match="n_eval"):
            P.check_n_eval(bad, SMOKE)


def test_purify_batched_matches_one_call_and_reseeds():
    x = torch.rand(10, 3, 8, 8)
    bits = BitDepthReduction(2)
    torch.testing.assert_close(P.purify_batched(bits, x, batch_size=3), bits(x))
    assert P.purify_batched(None, x) is x
    noise = GaussianNoise(0.1, seed=1)
    a = P.purify_batched(noise, x, batch_size=4, seed=7)
    b = P.purify_batched(noise, x, batch_size=4, seed=7)
    c = P.purify_batched(noise, x, batch_size=4, seed=8)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    assert not a.requires_grad


# ------------------------------------------------------------------------------------------------------ rows
def test_defense_rows_follow_the_protocol_and_equal_single_evaluations(shapes_model):
    model, x, y = shapes_model
    x, y = x[:12], y[:12]
    defenses = {"none": None, "noise": GaussianNoise(0.05, seed=1)}
    keep = {}
    common = dict(eps=8 / 255, steps=2, step_size=2 / 255, defense_runs=2, classifier="natural", dataset="shapes10",
                  seed=3)
    rows = P.defense_rows(defenses, model, x, y, ["fgsm", "pgd"], threat_models=P.white_box_and_eot,
                          eot_samples=2, eot_attacks=("pgd",), keep=keep, **common)
    assert [(r["defense"], r["threat_model"], r["attack"]) for r in rows] == [
        ("none", "none", "none"), ("none", "white-box", "fgsm"), ("none", "white-box", "pgd"),
        ("noise", "none", "none"), ("noise", "white-box", "fgsm"), ("noise", "white-box", "pgd"),
        ("noise", "white-box+eot", "pgd")]
    assert rows[-1]["eot_samples"] == 2 and rows[-2]["eot_samples"] == 1
    assert set(keep) == {("none", "white-box", "pgd"), ("noise", "white-box", "pgd"), ("noise", "white-box+eot", "pgd")}
    single = evaluate(defenses["noise"], model, x, y, attack="pgd", threat_model="white-box+eot", eot_samples=2,
                      defense="noise", **common)
    clean = clean_row(defenses["noise"], model, x, y, defense="noise", defense_runs=2, classifier="natural",
                      dataset="shapes10", seed=3)
    for column in ("accuracy", "n", "steps", "step_size", "defense_runs", "accuracy_mean_run"):
        assert rows[-1][column] == single[column], column
        assert rows[3][column] == clean[column], column


def test_defense_rows_default_threat_model_autoattack_and_no_clean_row(shapes_model):
    model, x, y = shapes_model
    x, y = x[:6], y[:6]
    rows = P.defense_rows({"bits": BitDepthReduction(3), "noise": GaussianNoise(0.05, seed=1)}, model, x, y,
                          ["pgd"], eps=8 / 255, steps=2, clean=False, eot_samples=2, autoattack=2, autoattack_rand=1,
                          seed=0, extra_column="x")
    assert [(r["defense"], r["threat_model"], r["attack"], r["n"]) for r in rows] == [
        ("bits", "bpda", "pgd", 6), ("bits", "bpda", "autoattack", 2),
        ("noise", "white-box+eot", "pgd", 6), ("noise", "white-box", "autoattack_rand", 1)]
    assert all(r["extra_column"] == "x" for r in rows)
    named = P.defense_rows({"noise": GaussianNoise(0.05, seed=1)}, model, x, y, ["pgd"], eps=8 / 255, steps=2,
                           threat_models="white-box", clean=False)
    assert [r["threat_model"] for r in named] == ["white-box"]


def test_mask_aware_rows_score_known_and_fresh_masks(shapes_model):
    model, x, y = shapes_model
    x, y = x[:6], y[:6]
    torch.manual_seed(0)
    denoiser = dir_denoiser.build_denoiser("smoke", 3, 32).eval()
    torch.nn.init.normal_(denoiser.head.weight, std=0.05)
    kwargs = dict(eps=8 / 255, steps=2, step_size=2 / 255, defense_runs=2, seed=1, batch_size=4, classifier="c")
    rows = P.mask_aware_rows(denoiser, model, x, y, **kwargs)
    again = P.mask_aware_rows(denoiser, model, x, y, **kwargs)
    assert [r["scoring"] for r in rows] == ["known masks", "fresh masks (worst of 2 runs)"]
    assert [r["accuracy"] for r in rows] == [r["accuracy"] for r in again]  # seeded: the same every call
    assert all(r["n"] == 6 and r["threat_model"] == "mask-aware (Eq. 8)" and r["steps"] == 2 for r in rows)


def test_stored_set_rows_are_evaluate_test_sets_per_defense(shapes_model):
    model, x, y = shapes_model
    clean = (x[:4] * 255).round().to(torch.uint8)
    adversarial = torch.cat([clean, 255 - clean])
    data = AdversarialSet(clean, y[:4], adversarial, torch.arange(8) % 4, torch.full((8,), 4 / 255),
                          torch.zeros(8, dtype=torch.long), ("fgsm:target",))
    sets = {"white": data}
    rows = P.stored_set_rows({"none": None, "bits": BitDepthReduction(2)}, model, sets, classifier="t",
                             dataset="shapes10")
    expected = (evaluate_test_sets(None, model, sets, defense="none", classifier_name="t", dataset="shapes10")
                + evaluate_test_sets(BitDepthReduction(2), model, sets, defense="bits", classifier_name="t",
                                     dataset="shapes10"))
    assert [(r["defense"], r["test_set"], r["accuracy"], r["denoising_loss"]) for r in rows] == [
        (r["defense"], r["test_set"], r["accuracy"], r["denoising_loss"]) for r in expected]


# ------------------------------------------------------------------------------------------------------ tables
def row(defense, attack, threat_model, correct, n=10, **extra):
    return result_row(defense=defense, classifier=extra.pop("classifier", "c"), dataset="d", threat_model=threat_model,
                      attack=attack, eps=0.0 if attack == "none" else 8 / 255, steps=20, step_size=2 / 255,
                      correct=correct, n=n, seed=0, seconds=0.0, **extra)


@pytest.fixture
def table1_rows():
    return rows_frame([
        row("None", "none", "none", 9), row("None", "pgd", "white-box", 4), row("None", "autoattack", "white-box", 3),
        row("DIR", "none", "none", 8), row("DIR", "pgd", "white-box", 6), row("DIR", "pgd", "white-box+eot", 5),
        row("DIR", "autoattack_rand", "white-box", 2)])


def test_pick_finds_one_row_and_says_why_not(table1_rows):
    assert P.pick(table1_rows, defense="DIR", attack="pgd", threat_model="white-box+eot").accuracy == 0.5
    assert P.pick(table1_rows, defense="None", eps=8 / 255, attack="pgd").accuracy == 0.4  # floats within 1e-6
    with pytest.raises(LookupError, match=r"2 rows match"):
        P.pick(table1_rows, defense="DIR", attack="pgd")
    with pytest.raises(LookupError, match=r"0 rows match.*attack: \['none', 'pgd'"):
        P.pick(table1_rows, defense="None", attack="cw")
    with pytest.raises(KeyError, match="no column"):
        P.pick(table1_rows, method="DIR")


def test_percent_table_gives_percent_and_interval(table1_rows):
    out = P.percent_table(table1_rows.iloc[:2], "attack", ["defense"])
    assert list(out.columns) == ["defense", "accuracy %", "95% CI"]
    assert out.loc["pgd", "accuracy %"] == 40.0
    first = table1_rows.iloc[1]
    assert out.loc["pgd", "95% CI"] == f"[{100 * first.ci_low:.1f}, {100 * first.ci_high:.1f}]"


def test_attack_table_puts_shared_rows_on_every_line(table1_rows):
    out = P.attack_table(table1_rows)
    assert list(out.index) == [("None", "white-box"), ("DIR", "white-box"), ("DIR", "white-box+eot")]
    assert list(out.columns) == ["Natural", "PGD", "AA"]
    assert out.loc[("DIR", "white-box"), "Natural"] == out.loc[("DIR", "white-box+eot"), "Natural"] == 80.0
    assert out.loc[("DIR", "white-box+eot"), "PGD"] == 50.0
    assert out.loc[("DIR", "white-box+eot"), "AA"] == 20.0  # the rand AutoAttack belongs to the EOT line
    assert pd.isna(out.loc[("DIR", "white-box"), "AA"])
    assert out.loc[("None", "white-box"), "AA"] == 30.0


def test_setting_table_takes_the_worst_adaptive_row():
    frame = rows_frame([row("a", "none", "none", 9, classifier="nat"), row("a", "pgd", "oblivious", 7, classifier="nat"),
                        row("a", "pgd", "white-box+eot", 3, classifier="nat"), row("a", "pgd", "bpda+eot", 2,
                                                                                   classifier="nat"),
                        row("a", "none", "none", 8, classifier="at"), row("a", "pgd", "bpda", 6, classifier="at")])
    flat = P.setting_table(frame[frame.classifier == "nat"])
    assert list(flat.columns) == ["clean", "oblivious", "adaptive"]
    assert flat.loc["a"].tolist() == [0.9, 0.7, 0.2]
    wide = P.setting_table(frame, columns=("classifier",))
    assert list(wide.columns) == [("nat", "clean"), ("nat", "oblivious"), ("nat", "adaptive"),
                                  ("at", "clean"), ("at", "oblivious"), ("at", "adaptive")]
    assert wide.loc["a", ("at", "adaptive")] == 0.6 and pd.isna(wide.loc["a", ("at", "oblivious")])
    assert P.threat_setting("transfer") == "transfer" and P.threat_setting("bpda") == "adaptive"


def test_accuracy_columns_and_side_by_side(table1_rows):
    frame = table1_rows[table1_rows.threat_model.isin(["none", "white-box"]) & (table1_rows.attack != "autoattack")
                        & (table1_rows.attack != "autoattack_rand")]
    cols = P.accuracy_columns(frame, "defense")
    assert list(cols.columns) == ["ours natural", "ours natural CI", "ours PGD", "ours PGD CI"]
    assert cols.loc["DIR", "ours PGD"] == 0.6
    ours = pd.DataFrame({"clean": [0.9123, 0.8], "adv": [0.1, 0.5]}, index=pd.Index(["none", "LGD"], name="defense"))
    paper = pd.DataFrame({"adv": [14.5, 75.2], "clean": [76.7, 76.2]}, index=["NA", "LGD"])
    both = P.side_by_side(ours, paper, labels=("ours", "paper (ImageNet)"), paper_names={"NA": "none"})
    assert list(both.index) == [("ours", "none"), ("ours", "LGD"), ("paper (ImageNet)", "none"),
                                ("paper (ImageNet)", "LGD")]
    assert both.index.names == ["source", "defense"]
    assert both.loc[("ours", "none"), "clean"] == 91.2 and both.loc[("paper (ImageNet)", "none"), "clean"] == 76.7
    raw = P.side_by_side(ours, paper, percent=False)
    assert raw.loc[("ours", "none"), "clean"] == 0.9123


def test_claims_give_no_verdict_on_a_collapsed_model():
    frame = rows_frame([row("DIR", "none", "none", 1, classifier="natural"), row("DIR", "pgd", "white-box", 1,
                                                                               classifier="natural"),
                        # 1000 images, so that 60% against 40% is a verdict and not "cannot tell at this size"
                        row("DIR", "none", "none", 900, n=1000, classifier="pgd_at"),
                        row("DIR", "pgd", "white-box", 600, n=1000, classifier="pgd_at"),
                        row("None", "pgd", "white-box", 400, n=1000, classifier="pgd_at")])
    collapsed = P.collapsed_models(frame, n_classes=10)
    assert collapsed == {("DIR", "natural"): 0.1}
    rows = frame.to_dict("records")
    line = P.claim_between("DIR above None", "54 vs 45", rows[1], rows[4], collapsed=collapsed)
    assert line["holds here"] == "no verdict: DIR collapsed"
    line = P.claim_between("DIR above None", "54 vs 45", rows[3], rows[4], collapsed=collapsed)
    assert line["holds here"] == "yes"  # the same name on another classifier did not collapse
    assert P.claim_between("x", "p", rows[3], rows[4], checked=False)["holds here"] == "not checked at smoke"
    assert (P.verdict(True), P.verdict(False), P.verdict(True, checked=False)) == ("yes", "no", "not checked at smoke")


def test_training_summary_lines():
    records = {"DAE": {"cached": True, "metrics": {"train_seconds": 12.34, "epoch_losses": [0.123456, 0.1], "train_pairs": 70}},
               "JATP": {"cached": False, "metrics": {"train_seconds": 3.0}}}
    out = P.training_summary(records)
    assert out.loc["DAE", "from cache"] and out.loc["DAE", "train seconds"] == 12.3
    assert out.loc["DAE", "loss by epoch"] == [0.1235, 0.1] and out.loc["DAE", "train pairs"] == 70
    assert pd.isna(out.loc["JATP", "train pairs"])


def test_eps_table_pivots_accuracy_in_percent_with_eps_in_255():
    frame = pd.DataFrame({"defense": ["a", "a", "b", "b"], "attack": ["fgsm", "bim", "fgsm", "bim"],
                          "eps": [8 / 255, 8 / 255, 8 / 255, 8 / 255], "accuracy": [0.5, 0.25, 1.0, 0.0]})
    table = P.eps_table(frame, "defense")
    assert list(table.columns) == [("fgsm", 8), ("bim", 8)]  # the frame's order, ε in /255
    assert table.loc["a", ("bim", 8)] == 25.0 and table.loc["b", ("fgsm", 8)] == 100.0


def test_attack_columns_put_clean_first_then_the_attacks_in_order():
    frame = rows_frame([row("a", "pgd", "oblivious", 4), row("a", "none", "none", 9), row("a", "fgsm", "oblivious", 6),
                        row("b", "none", "none", 8), row("b", "fgsm", "oblivious", 2), row("b", "pgd", "oblivious", 1)])
    table = P.attack_columns(frame, "defense", ["fgsm", "pgd", "cw"])  # cw absent: left out
    assert list(table.columns) == ["clean", "fgsm", "pgd"] and list(table.index) == ["a", "b"]
    assert table.loc["a", "clean"] == pytest.approx(90.0) and table.loc["b", "pgd"] == pytest.approx(10.0)


def test_verdict_counts_count_only_differences_beyond_the_intervals():
    first = rows_frame([row("a", "fgsm", "oblivious", 95, n=100), row("a", "pgd", "oblivious", 50, n=100),
                        row("a", "cw", "oblivious", 5, n=100)]).set_index("attack")
    second = rows_frame([row("b", "fgsm", "oblivious", 10, n=100), row("b", "pgd", "oblivious", 52, n=100),
                         row("b", "cw", "oblivious", 90, n=100)]).set_index("attack")
    assert P.verdict_counts(first, second, ["fgsm", "pgd", "cw"]) == {"first above": 1, "first below": 1,
                                                                     "cannot tell": 1}
    assert P.verdict_counts(first, second, ["fgsm"], checked=False) == {"first above": 0, "first below": 0,
                                                                       "cannot tell": 0}


# ---------------------------------------------------------------------------- transfer and targeted rows (RDP)
def _linear(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).eval()


def test_transfer_rows_equal_evaluate_oblivious_per_target():
    x = torch.rand(20, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sources, targets = {"s": _linear(1)}, {"t1": _linear(2), "t2": _linear(3)}
    y = targets["t1"](x).argmax(1)
    defenses = {"none": None, "bits": BitDepthReduction(3), "noise": GaussianNoise(0.1, seed=4)}
    common = dict(eps=16 / 255, steps=2, step_size=8 / 255, defense_runs=2, dataset="d", seed=5)
    rows = P.transfer_rows(defenses, targets, sources, x, y, ["fgsm", "pgd"], note="x", **common)
    keys = [(r["source"], r["attack"], r["defense"], r["classifier"]) for r in rows]
    assert keys[:6] == [("", "none", d, t) for d in defenses for t in targets]
    assert keys[6:] == [("s", a, d, t) for a in ("fgsm", "pgd") for d in defenses for t in targets]
    assert all(r["note"] == "x" for r in rows) and rows[0]["threat_model"] == "none" and rows[6]["threat_model"] == "transfer"
    frame = rows_frame(rows)
    for name, model in targets.items():
        for attack in ("fgsm", "pgd"):
            single = evaluate_oblivious(defenses, model, x, y, attack=attack, threat_model="transfer",
                                        surrogate=sources["s"], classifier=name, **common)
            for row in single:
                ours = P.pick(frame, source="s", attack=attack, defense=row["defense"], classifier=name)
                for column in ("accuracy", "accuracy_mean_run", "defense_runs", "steps", "step_size", "n"):
                    assert ours[column] == pytest.approx(row[column]), (name, attack, row["defense"], column)
        clean = clean_row(defenses["noise"], model, x, y, defense="noise", defense_runs=2, seed=5)
        assert P.pick(frame, attack="none", defense="noise", classifier=name).accuracy == clean["accuracy"]


def test_targeted_rows_reach_the_drawn_classes_and_name_their_threat_models():
    model = _linear(1)
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    rows = P.targeted_rows({"none": None, "noise": GaussianNoise(0.02, seed=1)}, model, x, y, eps=64 / 255, steps=10,
                           step_size=8 / 255, eot_samples=2, defense_runs=2, classifier="lin", seed=3)
    assert [(r["defense"], r["threat_model"], r["eot_samples"]) for r in rows] == [
        ("none", "white-box", 1), ("noise", "white-box+eot", 2)]
    assert rows[0]["targeted"] == "random" and rows[0]["target_hit"] > 0.8 and rows[0]["accuracy"] < 0.2
    assert rows[0]["target_hit"] + rows[0]["accuracy"] <= 1
    again = P.targeted_rows({"none": None}, model, x, y, eps=64 / 255, steps=10, step_size=8 / 255, classifier="lin",
                            seed=3)
    assert again[0]["accuracy"] == rows[0]["accuracy"] and again[0]["target_hit"] == rows[0]["target_hit"]
    weak = P.targeted_rows({"none": None}, model, x, y, eps=0.0, steps=1, classifier="lin", seed=3)
    assert weak[0]["accuracy"] == 1.0 and weak[0]["target_hit"] == 0.0  # ε = 0: nothing moves


def test_transfer_rows_reuse_the_kept_images():
    x = torch.rand(12, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sources, targets = {"s": _linear(1)}, {"t": _linear(2)}
    y = targets["t"](x).argmax(1)
    keep = {}
    first = P.transfer_rows({"none": None}, targets, sources, x, y, ["pgd"], eps=8 / 255, steps=2, keep=keep)
    assert set(keep) == {("s", "pgd", 8 / 255)}
    adversarial = keep[("s", "pgd", 8 / 255)][0]
    keep[("s", "pgd", 8 / 255)] = (x.clone(), 2, 4 / 255)  # planted: scored as given, not crafted again
    again = P.transfer_rows({"bits": BitDepthReduction(8)}, targets, sources, x, y, ["pgd"], eps=8 / 255, steps=2,
                            keep=keep, clean=False)
    assert again[0]["accuracy"] == 1.0 and again[0]["step_size"] == 4 / 255  # the clean images, all right
    assert len(first) == 2 and adversarial.shape == x.shape and not torch.equal(adversarial, x)
