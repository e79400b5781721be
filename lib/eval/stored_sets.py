"""Scoring a defense on stored adversarial sets (lib.attacks.attack_sets): HGD's Tables 2-5.

`evaluate_test_sets` gives one result row per test set and ε (the attacks of a set pooled, as the paper's
tables do) plus the clean row, each with the denoising loss mean |x̂ − x|; `results_table` pivots them into
the paper's layout (one row per defense, columns TABLE_COLUMNS).
"""
from __future__ import annotations

import time
from typing import Sequence

import pandas as pd
import torch
from torch import nn

from lib.attacks.attack_sets import TEST_ATTACKS, AdversarialSet
from lib.core.purifiers import purify_batched
from lib.core.results import result_row




@torch.no_grad()
def evaluate_test_sets(purifier: nn.Module | None, classifier: nn.Module, sets: dict[str, AdversarialSet], *,
                       defense: str, classifier_name: str, dataset: str, seed: int = 0, device="cpu",
                       batch_size: int = 250) -> list[dict]:
    """Accuracy and denoising loss (mean |x̂ − x|) of classifier ∘ purifier: clean, then each set and ε.

    A set's accuracy at an ε pools its attacks (as the paper's tables do). Rows are lib.core.results rows with
    the extra columns test_set and denoising_loss; threat_model is 'oblivious' for the white-box set (the
    paper's footnote 2) and 'transfer' for the black-box set.
    """
    if purifier is not None:
        purifier.eval()
    classifier.eval()
    rows = []
    first = next(iter(sets.values()))
    start = time.perf_counter()
    x = first.clean.to(device).float().div_(255)
    y = first.clean_labels.to(device)
    x_hat = purify_batched(purifier, x, batch_size)
    correct = sum(int((classifier(a).argmax(1) == b).sum()) for a, b in zip(x_hat.split(batch_size), y.split(batch_size)))
    rows.append(result_row(defense=defense, classifier=classifier_name, dataset=dataset, threat_model="none",
                           attack="none", eps=0.0, steps=0, step_size=0.0, correct=correct, n=len(y), seed=seed,
                           seconds=time.perf_counter() - start, test_set="clean",
                           denoising_loss=float((x_hat - x).abs().mean())))
    for name, data in sets.items():
        for eps in sorted(set(round(float(e), 8) for e in data.eps)):
            start = time.perf_counter()
            part = data.at_eps(eps)
            correct, loss_sum, count = 0, 0.0, 0
            for idx in torch.arange(len(part)).split(batch_size):
                x, x_adv, y = part.tensors(idx, device)
                x_hat = purify_batched(purifier, x_adv, batch_size)
                correct += int((classifier(x_hat).argmax(1) == y).sum())
                loss_sum += float((x_hat - x).abs().sum())
                count += x.numel()
            steps = max(a.steps for a in TEST_ATTACKS.get(name, ())) if name in TEST_ATTACKS else 0
            rows.append(result_row(defense=defense, classifier=classifier_name, dataset=dataset,
                                   threat_model="oblivious" if name == "white" else "transfer",
                                   attack="+".join(part.attack_names), eps=eps, steps=steps, step_size=float("nan"),
                                   correct=correct, n=len(part), seed=seed, seconds=time.perf_counter() - start,
                                   test_set=name, denoising_loss=loss_sum / count))
    return rows


TABLE_COLUMNS = ("clean", "white ε=4", "white ε=16", "black ε=4", "black ε=16")


def results_table(rows: Sequence[dict], value: str = "accuracy") -> pd.DataFrame:
    """Rows of `evaluate_test_sets` as the paper's tables: one row per defense, columns TABLE_COLUMNS."""
    frame = pd.DataFrame(list(rows))
    frame["column"] = [("clean" if t == "clean" else f"{t} ε={round(e * 255)}") for t, e in
                       zip(frame["test_set"], frame["eps"])]
    order = list(dict.fromkeys(frame["defense"]))
    table = frame.pivot_table(index="defense", columns="column", values=value, aggfunc="first")
    return table.reindex(index=order, columns=[c for c in TABLE_COLUMNS if c in table.columns])
