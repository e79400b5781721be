"""The attack registry, the threat models and the evaluation harness."""
import pandas as pd
import pytest
import torch

from lib.attacks.registry import ATTACKS, build_attack, run_attack
from lib.eval.evaluation import clean_row, evaluate
from lib.core.purifiers import Identity, Purifier
from lib.core.results import COLUMNS
from lib.eval.sanity import MaskedGradientQuantizer, all_passed, sanity_checks
from lib.attacks.threat_models import BPDA, EOT, attacked_model


def test_classifier_is_accurate(shapes_model):
    model, x, y = shapes_model
    assert clean_row(None, model, x, y)["accuracy"] >= 0.7


# AutoAttack's two versions run 100 iterations (×20 EOT draws): their configuration is tested below
@pytest.mark.parametrize("name", [a for a in ATTACKS if not a.startswith("autoattack")])
def test_each_attack_changes_predictions(shapes_model, name):
    model, x, y = shapes_model
    x, y = x[:16], y[:16]
    steps = 100 if name == "cw" else 5  # CW optimises slowly (lr 0.01)
    attack = build_attack(name, model, eps=32 / 255 if name != "pgd_l2" else 2.0, steps=steps, seed=0)
    adv = run_attack(attack, x, y, seed=0)
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    if name not in ("pgd_l2", "cw", "deepfool"):
        assert (adv - x).abs().max() <= 32 / 255 + 1e-6
    with torch.no_grad():
        changed = (model(adv).argmax(1) != model(x).argmax(1)).float().mean()
    # minimum-norm attacks (CW, DeepFool) lose some successes to the L∞ projection
    assert changed > (0.1 if name in ("cw", "deepfool") else 0.2), f"{name} changed only {changed:.0%}"


class _RangeChecked(torch.nn.Module):
    """A classifier that, like every purifier, refuses inputs outside [0, 1]."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        assert x.min() >= 0 and x.max() <= 1, "attack fed an out-of-range image to the model"
        return self.model(x)


@pytest.mark.parametrize("name", [a for a in ATTACKS if not a.startswith("autoattack")])
def test_every_attack_feeds_the_model_images_in_range(shapes_model, name):
    model, x, y = shapes_model
    attack = build_attack(name, _RangeChecked(model), eps=16 / 255 if name != "pgd_l2" else 1.0, steps=2, seed=0)
    run_attack(attack, x[:4], y[:4], seed=0)


def test_autoattack_uses_official_iterations(shapes_model):
    model, _, _ = shapes_model
    aa = build_attack("autoattack", model, eps=8 / 255, n_classes=10)
    steps = {type(a).__name__: getattr(a, "steps", getattr(a, "n_queries", None)) for a in aa.attacks}
    assert steps == {"APGD": 100, "APGDT": 100, "FAB": 100, "Square": 5000}
    rand = build_attack("autoattack_rand", model, eps=8 / 255)
    assert [a.eot_iter for a in rand.attacks] == [20, 20] and [a.loss for a in rand.attacks] == ["ce", "dlr"]


def test_eps_in_255_units_raises(shapes_model):
    model, _, _ = shapes_model
    with pytest.raises(ValueError, match="8/255"):
        build_attack("pgd", model, eps=8)


def test_unknown_names_raise(shapes_model):
    model, x, y = shapes_model
    with pytest.raises(ValueError, match="Unknown attack"):
        build_attack("pgdd", model)
    with pytest.raises(ValueError, match="Unknown threat model"):
        evaluate(None, model, x, y, threat_model="whitebox")


def test_run_attack_restores_global_rng(shapes_model):
    model, x, y = shapes_model
    torch.manual_seed(123)
    state = torch.get_rng_state()
    run_attack(build_attack("apgd_ce", model, eps=8 / 255, steps=3), x[:8], y[:8], seed=5)
    assert torch.equal(state, torch.get_rng_state())


def test_bpda_identity_equals_white_box(shapes_model):
    model, x, y = shapes_model
    white = run_attack(build_attack("pgd", attacked_model("white-box", Identity(), model)), x, y, seed=1)
    bpda = run_attack(build_attack("pgd", attacked_model("bpda", Identity(), model)), x, y, seed=1)
    assert torch.allclose(white, bpda, atol=1e-6)


def test_eot_over_deterministic_purifier_equals_plain_attack(shapes_model):
    model, x, y = shapes_model
    plain = run_attack(build_attack("pgd", attacked_model("white-box", Identity(), model), steps=5), x, y, seed=2)
    eot = run_attack(build_attack("pgd", attacked_model("white-box+eot", Identity(), model, eot_samples=4), steps=5),
                     x, y, seed=2)
    assert isinstance(attacked_model("eot", Identity(), model, eot_samples=4), EOT)
    assert (plain - eot).abs().max() <= 1e-5


class NoisyPurifier(Purifier):
    randomized = True

    def forward(self, x):
        noise = torch.randn(x.shape, generator=self.generator(x.device), device=x.device)
        return (x + 0.1 * noise).clamp(0, 1)


def test_random_purifier_uses_its_own_generator():
    p, x = NoisyPurifier(seed=3), torch.rand(2, 1, 8, 8)
    a = p(x)
    torch.manual_seed(0)  # reseeding the global RNG must not replay the defense's draws
    assert not torch.equal(a, p(x))
    assert torch.equal(p.reseed(3)(x), a)


def test_result_rows_carry_every_column(shapes_model):
    model, x, y = shapes_model
    row = evaluate(NoisyPurifier(), model, x[:16], y[:16], attack="fgsm", threat_model="white-box+eot",
                   eot_samples=2, defense_runs=3, defense="noise")
    assert set(COLUMNS) <= set(row)
    assert row["defense_runs"] == 3 and row["eot_samples"] == 2
    assert row["ci_low"] <= row["accuracy"] <= row["ci_high"]
    assert row["accuracy"] <= row["accuracy_majority"] + 1e-9 or row["accuracy"] <= row["accuracy_mean_run"]


def test_white_box_refuses_non_differentiable_purifier(shapes_model):
    model, x, y = shapes_model

    class Hard(Purifier):
        differentiable = False

        def forward(self, x):
            return x.round()

    with pytest.raises(ValueError, match="bpda"):
        evaluate(Hard(), model, x, y, threat_model="white-box")
    bpda = BPDA(Hard())
    xg = x[:2].clone().requires_grad_(True)
    bpda(xg).sum().backward()
    assert torch.allclose(xg.grad, torch.ones_like(xg))  # identity on the backward pass
    assert torch.equal(bpda(x[:2]), x[:2].round())  # exact forward


def test_sanity_checks_pass_for_identity_and_flag_masking(shapes_model):
    model, x, y = shapes_model
    table = sanity_checks(None, model, x, y, steps=5)
    assert isinstance(table, pd.DataFrame) and all_passed(table), table
    masked = sanity_checks(MaskedGradientQuantizer(), model, x, y, steps=5)
    failed = set(masked.loc[masked.passed == False, "check"])  # noqa: E712
    assert {"gradients_nonzero", "large_eps_to_chance"} <= failed, masked
    bpda = sanity_checks(MaskedGradientQuantizer(), model, x, y, steps=5, threat_model="bpda")
    assert all_passed(bpda), bpda


@pytest.mark.parametrize("name, need", [("autoattack", 4), ("autoattack_rand", 3), ("apgd_dlr", 3)])
def test_dlr_attacks_refuse_too_few_classes_before_any_work(name, need):
    from lib.attacks.registry import supports

    three_way = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, need - 1))
    assert not supports(name, need - 1) and supports(name, need) and supports("pgd", 2)
    with pytest.raises(ValueError, match=rf"{name} needs a classifier with at least {need} classes.*has {need - 1}"):
        build_attack(name, three_way, eps=8 / 255, n_classes=need - 1)
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="at least"):  # through evaluate, which reads the class count off the logits
        evaluate(None, three_way, x, y, attack=name, eps=8 / 255)
