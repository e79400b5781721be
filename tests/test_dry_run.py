"""The dry-run cap (lib.core.dry_run): a capped scale keeps every choice of its code path (architectures,
widths, method settings' objectives) and shrinks only the counts; capped runs never share a cache or an output
folder with real runs; the driver's --limit sets the cap for its notebooks. The notebooks themselves run under
the cap in tests/test_paper_dry_run.py."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import lib.run.reproduce as reproduce
from lib.attacks.pgd import pgd_linf
from lib.attacks.registry import build_attack
from lib.attacks.threat_models import EOT
from lib.core import cache, dry_run, result_cache
from lib.core.settings import SCALES, get_scale, scale_settings
from lib.defenses import dir_denoiser, impure
from lib.eval.leaderboard import PROTOCOLS, board_protocol
from lib.run.notebook import start_run


@pytest.fixture
def limit2(monkeypatch):
    monkeypatch.setenv(dry_run.LIMIT_ENV, "2")
    monkeypatch.delenv("PURIFY_CACHE", raising=False)
    monkeypatch.delenv("PURIFY_RESULT_CACHE", raising=False)


@pytest.fixture
def no_limit(monkeypatch):
    monkeypatch.delenv(dry_run.LIMIT_ENV, raising=False)


def test_no_limit_leaves_every_scale_and_setting_as_defined(no_limit):
    assert dry_run.active_limit() is None
    for name, scale in SCALES.items():
        assert get_scale(name) is scale and scale.folder == name
    assert scale_settings(dir_denoiser.SETTINGS, "paper", "DIR") is dir_denoiser.SETTINGS["paper"]
    assert dry_run.cap_steps(20) == 20


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5"])
def test_a_bad_limit_is_an_error_naming_the_variable(monkeypatch, text):
    monkeypatch.setenv(dry_run.LIMIT_ENV, text)
    with pytest.raises(ValueError, match="PURIFY_LIMIT.*positive int"):
        get_scale("paper")


def test_the_capped_paper_scale_keeps_its_architecture_and_caps_the_counts(limit2):
    paper, capped = SCALES["paper"], get_scale("paper")
    assert (capped.name, capped.classifier, capped.width, capped.lr) == (paper.name, paper.classifier, paper.width, paper.lr)
    assert capped.limit == 2 and capped.folder == "paper-limit2"
    assert capped.epochs == capped.robust_epochs == 1
    assert capped.batch_size == dry_run.BATCH and capped.n_train == 2 * dry_run.BATCH and capped.n_eval == 2 * dry_run.EVAL_BATCH
    assert capped.attack_steps == capped.robust_steps == dry_run.MAX_STEPS
    assert capped.eot_samples == capped.defense_runs == dry_run.MAX_DRAWS


def test_method_settings_keep_their_choices_and_cap_epochs_images_and_steps(limit2):
    full, capped = dir_denoiser.SETTINGS["paper"], scale_settings(dir_denoiser.SETTINGS, "paper", "DIR")
    for field in ("patch_size", "dim", "depth", "heads", "decoder_depth", "optimizer", "lr", "eps", "lr_drops"):
        assert getattr(capped, field) == getattr(full, field), field
    assert capped.epochs == capped.pretrain_epochs == 1
    assert capped.attack_steps == capped.rep_steps == dry_run.MAX_STEPS
    assert capped.batch_size == dry_run.BATCH and capped.n_train == 2 * dry_run.BATCH
    masked = scale_settings(impure.SETTINGS, "paper", "IMPure")
    assert (masked.subsets, masked.patch_size, masked.dim, masked.train_attacks) == (4, 16, 768, ("fgsm", "pgd", "mifgsm"))
    assert masked.epochs == 1 and masked.attack_steps == dry_run.MAX_STEPS
    unchanged = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) == getattr(capped, f.name)}
    assert {"epochs", "pretrain_epochs", "n_train", "attack_steps", "rep_steps"}.isdisjoint(unchanged)
    # HGD's 299-px denoiser asks for a smaller dry-run batch (its activations); a ClassVar, so not in its spec
    from lib.defenses import hgd
    small = scale_settings(hgd.SETTINGS, "paper", "HGD")
    assert small.batch_size == hgd.HGDSettings.dry_run_batch < dry_run.BATCH and small.n_train == 2 * small.batch_size
    assert "dry_run_batch" not in {f.name for f in dataclasses.fields(small)}


def test_capped_runs_use_their_own_caches_unless_told_otherwise(limit2, monkeypatch, tmp_path):
    assert cache.default_root().name == "models-limit2"
    assert result_cache.default_root().name == "results-limit2"
    monkeypatch.setenv("PURIFY_CACHE", str(tmp_path / "m"))
    assert cache.default_root() == tmp_path / "m"


def test_attacks_and_eot_run_at_most_the_capped_steps_and_draws(limit2):
    calls = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))

    def counting(x):
        calls.append(len(x))
        return model(x)

    x, y = torch.rand(2, 3, 4, 4), torch.tensor([0, 1])
    pgd_linf(counting, x, y, eps=8 / 255, steps=50, step_size=1 / 255)
    assert len(calls) == dry_run.MAX_STEPS
    assert build_attack("pgd", model, steps=50).steps == dry_run.MAX_STEPS
    assert EOT(model, 20).samples == dry_run.MAX_DRAWS
    standard, rand = build_attack("autoattack", model, n_classes=4), build_attack("autoattack_rand", model, n_classes=4)
    assert [a.steps for a in standard.attacks[:3]] == [dry_run.MAX_STEPS] * 3
    assert standard.attacks[3].n_queries == dry_run.MAX_QUERIES
    assert [a.eot_iter for a in rand.attacks] == [dry_run.MAX_DRAWS] * 2


def test_the_board_protocol_is_capped(limit2):
    p, full = board_protocol("paper"), PROTOCOLS["paper"]
    assert p.n_eval == get_scale("paper").n_eval and p.steps == dry_run.MAX_STEPS
    assert max(p.eot_curve) <= dry_run.MAX_DRAWS and p.eps == full.eps


def test_a_capped_notebook_says_so_and_writes_to_its_own_folder(limit2, monkeypatch, capsys):
    monkeypatch.delenv("PURIFY_FIGURES_DIR", raising=False)
    monkeypatch.delenv("PURIFY_RESULTS_DIR", raising=False)
    run = start_run("tour", dict(scale="paper", seed=0, device="cpu"))
    assert "DRY RUN capped at 2 batches" in capsys.readouterr().out
    assert run.figures.parts[-2:] == ("paper-limit2", "tour") and "paper-limit2" in run.results.parts


def test_the_driver_rejects_a_limit_below_one(no_limit):
    with pytest.raises(SystemExit):
        reproduce.main(["--scale", "paper", "--limit", "0", "--only", "tour"])


def test_a_notebook_default_n_eval_is_capped_but_an_explicit_one_is_still_checked(limit2):
    from lib.eval.protocols import check_n_eval

    capped = get_scale("paper")
    assert check_n_eval(None, capped, 1000) == capped.n_eval
    with pytest.raises(ValueError, match="n_eval=1000"):
        check_n_eval(1000, capped)
