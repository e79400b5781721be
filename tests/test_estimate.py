"""The cost estimate (lib.core.estimate, `python -m lib.run.reproduce --estimate`): a dry run's training,
attacks and forward passes are timed where lib runs them and scaled by exactly what the cap cut; nothing is
recorded without $PURIFY_ESTIMATE_LOG; the driver prints a time per notebook and in total and saves them."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import lib.run.reproduce as reproduce
from lib.attacks.pgd import pgd_linf
from lib.attacks.registry import build_attack, run_attack
from lib.core import dry_run, estimate
from lib.core.fit import epoch_batches, fit, trained
from lib.core.data import ImageData
from lib.core.settings import SCALES, get_scale, scale_settings
from lib.defenses import idfr
from lib.eval.evaluation import score
from lib.eval.protocols import check_n_eval
from tiny_notebooks import write_notebook  # tests/ is on sys.path

KERNEL = ["--kernel", "python3"]


@pytest.fixture
def recording(tmp_path, monkeypatch):
    """Recording on, under a limit of 2, into a fresh log; the module's noted caps start empty."""
    log = tmp_path / "steps.jsonl"
    monkeypatch.setenv(estimate.ESTIMATE_ENV, str(log))
    monkeypatch.setenv(dry_run.LIMIT_ENV, "2")
    estimate.reset()
    yield log
    estimate.reset()


def lines(log) -> list[dict]:
    return [json.loads(t) for t in log.read_text().splitlines()] if log.exists() else []


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()


def test_nothing_is_recorded_without_the_log_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(estimate.ESTIMATE_ENV, raising=False)
    monkeypatch.setenv(dry_run.LIMIT_ENV, "2")
    estimate.reset()
    get_scale("paper")
    with estimate.timed("attack") as frame:
        assert frame is None
    pgd_linf(tiny_model(), torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long), eps=8 / 255, steps=20,
             step_size=2 / 255)
    assert estimate.full_value("epochs", 1) == 1 and estimate.image_ratio() == 1.0
    assert not list(tmp_path.iterdir())


def test_the_caps_remember_what_they_cut(recording):
    paper = SCALES["paper"]
    capped = get_scale("paper")
    assert estimate.full_value("epochs", capped.epochs) == paper.epochs
    assert estimate.full_value("n_train", capped.n_train) == paper.n_train
    assert estimate.image_ratio() == paper.n_eval / capped.n_eval
    s_full, s = idfr.SETTINGS["paper"], scale_settings(idfr.SETTINGS, "paper", "IDFR")
    # epochs capped to 1 from 100 (ID, and the scale) and from 80 (FR): the largest original stands for 1
    assert estimate.full_value("id_epochs", s.id_epochs) == s_full.id_epochs
    assert estimate.full_value("fr_epochs", s.fr_epochs) == s_full.fr_epochs
    ratios = estimate.training_ratios({"kind": "x", "training": {"id_epochs": s.id_epochs, "n_train": s.n_train},
                                       "lr": 0.01})
    assert ratios == {"epochs": s_full.id_epochs / s.id_epochs, "images": s_full.n_train / s.n_train, "steps": 1.0}
    # the notebook's own evaluation size wins over the scale's
    n = check_n_eval(None, capped, 1000)
    assert estimate.image_ratio() == 1000 / n


def test_an_attack_is_scaled_by_the_steps_the_cap_cut_and_the_images(recording):
    get_scale("paper")  # the scale's image ratio
    x, y = torch.rand(8, 3, 8, 8), torch.zeros(8, dtype=torch.long)
    pgd_linf(tiny_model(), x, y, eps=8 / 255, steps=20, step_size=2 / 255)
    [line] = lines(recording)
    assert line["kind"] == "attack" and line["ratios"]["steps"] == 20 / dry_run.MAX_STEPS
    assert line["estimate"] == pytest.approx(line["seconds"] * 10 * estimate.image_ratio())


def test_only_the_outermost_step_counts_and_autoattack_parts_keep_their_own_ratios(recording):
    model, x, y = tiny_model(), torch.rand(8, 3, 8, 8), torch.randint(0, 4, (8,))
    run_attack(build_attack("autoattack", model, 8 / 255, n_classes=4), x, y)
    [line] = lines(recording)  # APGD, APGD-T, FAB and Square inside: one line, with one part each that ran
    assert line["attack"] == "SequentialWorstCase" and line["parts"]
    assert {tuple(sorted(r)) for _, r in line["parts"]} <= {("steps",), ("queries",)}
    assert all(r == {"steps": 50.0} or r == {"queries": 500.0} for _, r in line["parts"])
    inside = sum(t for t, _ in line["parts"])
    assert inside <= line["seconds"]
    expected = sum(t * max(r.values()) for t, r in line["parts"]) + (line["seconds"] - inside)
    assert line["estimate"] == pytest.approx(expected * estimate.image_ratio())


def test_fixed_step_attacks_are_not_scaled_by_the_steps_argument(recording):
    atk = build_attack("fgsm", tiny_model(), 8 / 255, steps=20)
    assert atk.estimate_ratios == {}


def test_score_scales_by_the_defense_runs_the_cap_cut(recording):
    capped = get_scale("paper")

    class Noisy(nn.Module):
        randomized = True

        def forward(self, x):
            return (x + 0.01 * torch.randn_like(x)).clamp(0, 1)

    score(Noisy(), tiny_model(), torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long), runs=capped.defense_runs)
    [line] = lines(recording)
    assert line["kind"] == "predict"
    assert line["ratios"]["runs"] == SCALES["paper"].defense_runs / capped.defense_runs


class StepTrainer:
    def __init__(self):
        self.model = tiny_model()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)

    def step(self, x, y):
        loss = nn.functional.cross_entropy(self.model(x), y)
        self.opt.zero_grad(), loss.backward(), self.opt.step()
        return {"loss": loss}


def test_training_is_scaled_by_epochs_and_images_from_its_spec(recording, tmp_path):
    s_full, s = SCALES["paper"], get_scale("paper")
    data = ImageData("shapes10", "train", torch.randint(0, 256, (s.n_train, 3, 8, 8), dtype=torch.uint8),
                     torch.randint(0, 4, (s.n_train,)), tuple(str(i) for i in range(10)))
    spec = {"kind": "toy", "epochs": s.epochs, "n_train": s.n_train, "batch_size": s.batch_size}

    def train(model):
        trainer = StepTrainer()
        trainer.model = model
        trainer.opt = torch.optim.SGD(model.parameters(), lr=0.1)
        log = fit(trainer, epoch_batches(data, s.batch_size, 0, "cpu"), epochs=s.epochs, desc="toy", progress=False)
        return {"seconds": log.seconds}

    from lib.core.cache import ModelCache
    trained(spec, tiny_model, train, cache=ModelCache(tmp_path / "cache"))
    [line] = lines(recording)
    assert line["kind"] == "train" and line["model"] == "toy"
    assert line["ratios"] == {"epochs": s_full.epochs / s.epochs, "images": s_full.n_train / s.n_train, "steps": 1.0}
    assert line["fit_steps"] == s.n_train // s.batch_size
    # the full run's steps: (epochs x images) ratio times the capped steps, each at the cost of a later step
    assert line["estimate"] > line["fit_seconds"] * 100
    trained(spec, tiny_model, train, cache=ModelCache(tmp_path / "cache"))  # loaded from the cache: not timed
    assert len(lines(recording)) == 1


def test_summarise_adds_the_kinds_and_keeps_the_rest_unscaled(tmp_path):
    log = tmp_path / "nb.jsonl"
    log.write_text("\n".join(json.dumps(t) for t in [
        {"kind": "train", "seconds": 2.0, "estimate": 200.0}, {"kind": "attack", "seconds": 1.0, "estimate": 50.0},
        {"kind": "attack", "seconds": 1.0, "estimate": 30.0}, {"kind": "predict", "seconds": 0.5, "estimate": 5.0}]))
    out = estimate.summarise(log, wall_seconds=10.0)
    assert (out["train_estimate"], out["attack_estimate"], out["predict_estimate"]) == (200.0, 80.0, 5.0)
    assert out["other"] == pytest.approx(5.5) and out["total_estimate"] == pytest.approx(290.5)
    assert estimate.format_duration(30) == "30 s" and estimate.format_duration(3 * 3600) == "3.0 h"
    assert estimate.format_duration(5 * 86400) == "5.0 days"


ESTIMATED = """\
import torch
from lib.attacks.pgd import pgd_linf
from lib.core.settings import get_scale
S = get_scale(scale)
x, y = torch.rand(S.n_eval, 3, 8, 8), torch.zeros(S.n_eval, dtype=torch.long)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4))
pgd_linf(model, x, y, eps=8 / 255, steps=20, step_size=2 / 255)
"""


@pytest.fixture
def repo(tmp_path, monkeypatch):
    notebooks = tmp_path / "notebooks"
    write_notebook(notebooks / "tiny.ipynb", "scale = None", ESTIMATED)
    monkeypatch.setattr(reproduce, "REPO", tmp_path)
    monkeypatch.setattr(reproduce, "NOTEBOOKS", notebooks)
    for key in (dry_run.LIMIT_ENV, estimate.ESTIMATE_ENV, "PURIFY_CACHE", "PURIFY_RESULT_CACHE"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path


def test_the_driver_prints_and_saves_an_estimate_per_notebook(repo, capsys):
    assert reproduce.main(["--scale", "paper", "--estimate", "--only", "tiny", *KERNEL]) == 0
    out = capsys.readouterr().out
    assert "expected wall time at paper" in out and "tiny" in out and "total" in out
    saved = json.loads((repo / "papermill_runs" / "paper-limit2" / "estimate" / "estimate.json").read_text())
    assert saved["limit"] == 2 and saved["failed"] == []
    tiny = saved["notebooks"]["tiny"]
    [step] = [json.loads(t) for t in (repo / "papermill_runs" / "paper-limit2" / "estimate" / "tiny.jsonl")
              .read_text().splitlines()]
    ratio = SCALES["paper"].n_eval / (2 * dry_run.EVAL_BATCH) * 20 / dry_run.MAX_STEPS
    assert step["estimate"] == pytest.approx(step["seconds"] * ratio)
    assert tiny["attack_estimate"] == pytest.approx(step["estimate"])
    assert tiny["total_estimate"] >= tiny["attack_estimate"]
    # the driver's environment is as it was: no cap, no log, the real caches
    import os
    assert not {dry_run.LIMIT_ENV, estimate.ESTIMATE_ENV, "PURIFY_CACHE", "PURIFY_RESULT_CACHE"} & set(os.environ)


def test_the_estimate_runs_one_notebook_at_a_time(repo):
    with pytest.raises(SystemExit):
        reproduce.main(["--scale", "paper", "--estimate", "--jobs", "2", *KERNEL])


def test_an_attack_run_with_the_capped_scale_steps_counts_the_scale_own(recording):
    capped = get_scale("paper")  # attack_steps 20 -> 2: a notebook passing S.attack_steps asked for 20
    atk = build_attack("pgd", tiny_model(), 8 / 255, steps=capped.attack_steps)
    assert atk.estimate_ratios == {"steps": SCALES["paper"].attack_steps / capped.attack_steps}


def test_adversarial_training_scales_its_inner_attack_by_the_steps_the_cap_cut(recording, tmp_path):
    from dataclasses import asdict

    from lib.core.cache import ModelCache
    from lib.models.recipes import recipe_for

    s = get_scale("paper")
    recipe = recipe_for("pgd_at", s)  # robust_steps 5 -> 2 under the cap
    data = ImageData("shapes10", "train", torch.randint(0, 256, (s.n_train, 3, 8, 8), dtype=torch.uint8),
                     torch.randint(0, 4, (s.n_train,)), tuple(str(i) for i in range(10)))

    class Robust(StepTrainer):
        def step(self, x, y):
            x = pgd_linf(self.model, x, y, eps=8 / 255, steps=recipe.steps, step_size=2 / 255)
            return super().step(x, y)

    def train(model):
        trainer = Robust()
        trainer.model, trainer.opt = model, torch.optim.SGD(model.parameters(), lr=0.1)
        fit(trainer, epoch_batches(data, s.batch_size, 0, "cpu"), epochs=recipe.epochs, desc="toy", progress=False)
        return {}

    trained({"kind": "toy_at", "n_train": s.n_train, "recipe": asdict(recipe)}, tiny_model, train,
            cache=ModelCache(tmp_path / "cache"))
    [line] = lines(recording)  # the inner PGD is part of the training line, not an attack line of its own
    assert line["kind"] == "train" and 0 < line["inner_attack_seconds"] <= line["fit_seconds"]
    full = SCALES["paper"].robust_steps
    assert line["ratios"]["steps"] == (full + 1) / (recipe.steps + 1)
    assert line["ratios"]["epochs"] == SCALES["paper"].robust_epochs / recipe.epochs
