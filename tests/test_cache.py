"""The model cache (lib.core.cache): stable spec hashes, load-or-train, atomic writes, loud failures."""
import os
import shutil
import time

import pytest
import torch
from torch import nn

from lib.core.cache import CheckpointError, ModelCache, spec_hash

SPEC = {"kind": "classifier", "arch": "linear", "width": 4, "dataset": "toy", "seed": 0,
        "recipe": {"name": "natural", "epochs": 1, "lr": 0.1}}


def build(out_features: int = 2) -> nn.Module:
    return nn.Linear(4, out_features)


class Trainer:
    """A `train(model)` that counts its calls and changes the weights deterministically."""

    def __init__(self):
        self.calls = 0

    def __call__(self, model: nn.Module) -> dict:
        self.calls += 1
        with torch.no_grad():
            for i, p in enumerate(model.parameters()):
                p.copy_(torch.arange(p.numel(), dtype=p.dtype).view_as(p) * 0.1 + i)
        return {"train_accuracy": 0.5, "test_accuracy": 0.25}


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --- spec hashes -------------------------------------------------------------------------------------

def test_spec_hash_ignores_key_order():
    reordered = dict(reversed(list(SPEC.items())))
    reordered["recipe"] = dict(reversed(list(SPEC["recipe"].items())))
    assert list(reordered) != list(SPEC)
    assert spec_hash(reordered) == spec_hash(SPEC)


@pytest.mark.parametrize("key,value", [("arch", "linear2"), ("width", 5), ("seed", 1), ("dataset", "toy2"),
                                       ("recipe", {"name": "natural", "epochs": 2, "lr": 0.1}),
                                       ("recipe", {"name": "natural", "epochs": 1, "lr": 0.1000001})])
def test_spec_hash_changes_with_any_value(key, value):
    assert spec_hash({**SPEC, key: value}) != spec_hash(SPEC)


def test_spec_hash_changes_with_an_added_key():
    assert spec_hash({**SPEC, "extra": None}) != spec_hash(SPEC)


def test_path_is_named_by_kind_and_hash(tmp_path):
    cache = ModelCache(tmp_path)
    assert cache.path(SPEC) == tmp_path / f"classifier-{spec_hash(SPEC)}.pt"
    assert not cache.exists(SPEC)


# --- load or train -----------------------------------------------------------------------------------

def test_load_or_train_trains_once_then_loads(tmp_path):
    cache, train = ModelCache(tmp_path), Trainer()
    first, rec1 = cache.load_or_train(SPEC, build, train)
    assert train.calls == 1 and rec1["cached"] is False
    trained_on = rec1["metrics"].pop("trained_on")  # the machine a cached time was measured on
    assert rec1["metrics"] == {"train_accuracy": 0.5, "test_accuracy": 0.25}
    assert trained_on["hardware"] and trained_on["torch"] == torch.__version__ and trained_on["time"]
    assert rec1["path"] == str(cache.path(SPEC)) and rec1["hash"] == spec_hash(SPEC)
    assert not first.training

    start = time.perf_counter()
    second, rec2 = cache.load_or_train(SPEC, build, train)
    elapsed = time.perf_counter() - start
    assert train.calls == 1, "a cached model was retrained"
    assert rec2["cached"] is True and rec2["metrics"].pop("trained_on") == trained_on
    assert rec2["metrics"] == rec1["metrics"]
    assert not second.training
    assert elapsed < 1.0 and rec2["load_seconds"] < 1.0
    for (k1, v1), (k2, v2) in zip(first.state_dict().items(), second.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    assert not torch.equal(second.weight, build().weight)  # the trained weights, not a fresh init
    assert leftovers(tmp_path) == []


def test_spec_with_tuples_round_trips(tmp_path):
    spec = {**SPEC, "blocks": (1, 1, 1, 1)}
    cache, train = ModelCache(tmp_path), Trainer()
    cache.load_or_train(spec, build, train)
    _, record = cache.load_or_train(spec, build, train)
    assert record["cached"] is True and train.calls == 1


def test_different_specs_get_different_checkpoints(tmp_path):
    cache, train = ModelCache(tmp_path), Trainer()
    cache.load_or_train(SPEC, build, train)
    _, record = cache.load_or_train({**SPEC, "seed": 1}, build, train)
    assert record["cached"] is False and train.calls == 2
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_checkpoint_loads_with_weights_only(tmp_path):
    cache = ModelCache(tmp_path)
    model = build()
    Trainer()(model)
    path = cache.save(SPEC, model, {"acc": torch.tensor(0.5)})  # tensors in metrics become floats
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert set(payload) >= {"format", "spec", "metrics", "state_dict"}
    assert torch.equal(payload["state_dict"]["weight"], model.weight)
    fresh = build()
    assert cache.load(SPEC, fresh) == {"acc": 0.5}
    assert torch.equal(fresh.weight, model.weight)


def test_load_of_missing_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        ModelCache(tmp_path).load(SPEC, build())


# --- atomic writes -----------------------------------------------------------------------------------

def failing_save(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 half a checkpoint")
    raise OSError("disk full (simulated)")


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    cache = ModelCache(tmp_path)
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="simulated"):
        cache.save(SPEC, build(), {})
    assert not cache.path(SPEC).exists()
    assert leftovers(tmp_path) == [] and list(tmp_path.iterdir()) == []


def test_failed_training_save_does_not_cache(tmp_path, monkeypatch):
    cache, train = ModelCache(tmp_path), Trainer()
    with monkeypatch.context() as m:
        m.setattr(torch, "save", failing_save)
        with pytest.raises(OSError):
            cache.load_or_train(SPEC, build, train)
    assert not cache.exists(SPEC)
    _, record = cache.load_or_train(SPEC, build, train)  # the next call trains again and saves
    assert record["cached"] is False and train.calls == 2 and cache.exists(SPEC)


def test_failed_save_keeps_existing_checkpoint(tmp_path, monkeypatch):
    cache = ModelCache(tmp_path)
    good = build()
    Trainer()(good)
    path = cache.save(SPEC, good, {"acc": 1.0})
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        cache.save(SPEC, build(), {"acc": 0.0})
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    loaded = build()
    assert cache.load(SPEC, loaded) == {"acc": 1.0} and torch.equal(loaded.weight, good.weight)


def test_interrupt_during_save_cleans_up(tmp_path, monkeypatch):
    def interrupted(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    cache = ModelCache(tmp_path)
    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.save(SPEC, build(), {})
    assert list(tmp_path.iterdir()) == []


# --- corrupt or mismatched checkpoints ---------------------------------------------------------------

def _saved(tmp_path) -> tuple[ModelCache, "os.PathLike"]:
    cache = ModelCache(tmp_path)
    model = build()
    Trainer()(model)
    return cache, cache.save(SPEC, model, {"acc": 1.0})


@pytest.mark.parametrize("damage", ["random", "truncated", "empty", "pickle"])
def test_corrupt_checkpoint_raises_and_never_retrains(tmp_path, damage):
    cache, path = _saved(tmp_path)
    data = path.read_bytes()
    if damage == "random":
        corrupt = os.urandom(len(data))
    elif damage == "truncated":
        corrupt = data[: len(data) // 2]
    elif damage == "empty":
        corrupt = b""
    else:  # a valid file that is not one of ours: a plain tensor
        torch.save(torch.zeros(3), path)
        corrupt = path.read_bytes()
    path.write_bytes(corrupt)
    train = Trainer()
    with pytest.raises(CheckpointError) as info:
        cache.load_or_train(SPEC, build, train)
    assert str(path) in str(info.value) and "Delete" in str(info.value)
    assert train.calls == 0
    assert path.read_bytes() == corrupt  # left for the user to inspect, not overwritten


def test_checkpoint_of_another_spec_raises(tmp_path):
    cache, path = _saved(tmp_path)
    other = {**SPEC, "seed": 1}
    shutil.copy(path, cache.path(other))
    train = Trainer()
    with pytest.raises(CheckpointError, match="different spec") as info:
        cache.load_or_train(other, build, train)
    assert str(cache.path(other)) in str(info.value)
    assert train.calls == 0


def test_architecture_mismatch_raises(tmp_path):
    cache, path = _saved(tmp_path)
    train = Trainer()
    with pytest.raises(CheckpointError, match="architecture") as info:
        cache.load_or_train(SPEC, lambda: build(out_features=3), train)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError, match="architecture"):
        cache.load(SPEC, nn.Sequential(nn.Linear(4, 2)))  # same tensors under other names
    assert train.calls == 0


@pytest.mark.parametrize("change", ["format", "no_spec", "no_metrics", "no_state_dict"])
def test_foreign_or_incomplete_payload_raises(tmp_path, change):
    cache, path = _saved(tmp_path)
    payload = torch.load(path, weights_only=True)
    if change == "format":
        payload["format"] = 999
    else:
        del payload[change[3:]]
    torch.save(payload, path)
    train = Trainer()
    with pytest.raises(CheckpointError, match="format") as info:
        cache.load_or_train(SPEC, build, train)
    assert str(path) in str(info.value) and train.calls == 0


CONCURRENT_JOB = """
import sys, time, torch
from lib.core.cache import ModelCache
root, log = sys.argv[1], sys.argv[2]

def train(model):
    with open(log, "a") as f:
        f.write("trained\\n")
    time.sleep(1.5)  # long enough that the second job asks while the first is still training
    torch.nn.init.constant_(model.weight, 0.25)
    return {"loss": 0.0}

model, record = ModelCache(root).load_or_train({"kind": "toy", "v": 1}, lambda: torch.nn.Linear(2, 2), train)
print(record["cached"], float(model.weight[0, 0]))
"""


def test_two_processes_asking_for_one_uncached_model_train_it_once(tmp_path):
    import subprocess
    import sys

    from lib.core.provenance import REPO

    log = tmp_path / "log.txt"
    jobs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_JOB, str(tmp_path / "cache"), str(log)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [job.communicate(timeout=120) for job in jobs]
    assert all(job.returncode == 0 for job in jobs), [err[-500:] for _, err in outputs]
    assert log.read_text().count("trained") == 1
    results = sorted(out.split()[0] for out, _ in outputs)
    assert results == ["False", "True"]  # one trained it, the other waited and loaded it
    assert all(out.split()[1] == "0.25" for out, _ in outputs)
