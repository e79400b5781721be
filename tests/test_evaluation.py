"""Evaluation helpers beyond `evaluate`: one attack scored through many purifiers, sanity-check options."""
import pytest
import torch

from lib.eval.evaluation import evaluate, evaluate_oblivious
from lib.core.purifiers import Identity
from lib.eval.sanity import sanity_checks
from lib.defenses.transforms import BitDepthReduction, GaussianNoise


def test_oblivious_rows_match_one_evaluation_per_purifier(shapes_model):
    model, x, y = shapes_model
    x, y = x[:24], y[:24]
    purifiers = {"none": None, "bits2": BitDepthReduction(2), "noise": GaussianNoise(0.1, seed=1)}
    rows = evaluate_oblivious(purifiers, model, x, y, attack="pgd", eps=8 / 255, steps=4, defense_runs=2,
                              seed=3, classifier="natural")
    assert [r["defense"] for r in rows] == list(purifiers)
    for row, (name, purifier) in zip(rows, purifiers.items()):
        single = evaluate(purifier, model, x, y, attack="pgd", threat_model="oblivious", eps=8 / 255, steps=4,
                          defense_runs=2, seed=3)
        for column in ("accuracy", "n", "steps", "step_size", "defense_runs", "accuracy_mean_run"):
            assert row[column] == single[column], (name, column)
    # the purifier matters: 2-bit quantisation undoes part of an oblivious attack
    assert rows[1]["accuracy"] != rows[0]["accuracy"] or rows[0]["accuracy"] == 1


def test_transfer_rows_score_a_defense_with_its_own_classifier_on_the_same_images(shapes_model):
    model, x, y = shapes_model
    x, y = x[:24], y[:24]
    surrogate = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x[0].numel(), 10))
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x[0].numel(), 10))
    rows = evaluate_oblivious({"none": None, "other": (None, other, "other classifier")}, model, x, y,
                              attack="bim", threat_model="transfer", surrogate=surrogate, eps=8 / 255, steps=3,
                              classifier="natural", seed=1)
    assert [r["classifier"] for r in rows] == ["natural", "other classifier"]
    for row, clf in zip(rows, (model, other)):  # the surrogate's images, scored by each classifier
        single = evaluate(None, clf, x, y, attack="bim", threat_model="transfer", surrogate=surrogate,
                          eps=8 / 255, steps=3, seed=1)
        assert row["accuracy"] == single["accuracy"]


def test_oblivious_rows_refuse_attacks_that_see_the_purifier(shapes_model):
    model, x, y = shapes_model
    with pytest.raises(ValueError, match="evaluate"):
        evaluate_oblivious({"none": Identity()}, model, x, y, threat_model="bpda")


def test_eot_curve_is_configurable_and_checked(shapes_model):
    model, x, y = shapes_model
    table = sanity_checks(GaussianNoise(0.05), model, x[:16], y[:16], steps=2, eot_curve=(1, 2, 3), defense_runs=2)
    numbers = table.set_index("check").loc["eot_converged", "numbers"]
    assert numbers.startswith("EOT 1/2/3:"), numbers
    with pytest.raises(ValueError, match="increasing"):
        sanity_checks(None, model, x, y, eot_curve=(10, 1))
