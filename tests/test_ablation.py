"""Unit ablation (cxrsem.attribution.ablation, ``attribute --ablate``) against hand computations on
a model whose units are known: one carries the whole signal, one is a decoy with the largest
activation and no outgoing weight, one is unused."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from cxrsem.attribution.ablation import (
    AblationSettings,
    ablate_image,
    parse_ks,
    random_unit_sets,
    top_unit_sets,
)
from cxrsem.attribution.ig import IntegratedGradients
from cxrsem.attribution.methods import unit_scores
from cxrsem.engine.split import split_at
from cxrsem.errors import UsageError
from cxrsem.testing import attribution_assets, run_cli

WEIGHT, BIAS = 2.0, 0.5


class Carrier(nn.Module):
    """``features``: unit 0 = x (carries the signal), unit 1 = 5x + 1 (the decoy: the largest
    activation, zero outgoing weight), unit 2 = 0.1x (unused); ``f = softplus(2 mean(A_0)) + 0.5``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 3, 1)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([1.0, 5.0, 0.1])[:, None, None, None])
            self.features.bias.copy_(torch.tensor([0.0, 1.0, 0.0]))
        self.readout = nn.Linear(3, 1)
        with torch.no_grad():
            self.readout.weight.copy_(torch.tensor([[WEIGHT, 0.0, 0.0]]))
            self.readout.bias.fill_(0.0)

    def forward(self, x):
        return nn.functional.softplus(self.readout(self.features(x).mean(dim=(2, 3)))) + BIAS


def _f(mean_a0: float) -> float:
    return float(np.log1p(np.exp(WEIGHT * mean_a0)) + BIAS)


@pytest.fixture
def carrier():
    model = Carrier().eval()
    x = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(0)) + 0.2
    split = split_at(model, "features", x)
    activations, extras = split.head(x)
    return model, x, split, activations, extras


def _values(logits):
    return logits


def test_ablating_the_carrying_unit_changes_the_output_as_by_hand(carrier):
    _, x, split, activations, extras = carrier
    mean_a0 = float(x[0].mean())
    scores = torch.tensor([3.0, 2.0, 1.0])  # unit 0 first, then the decoy, then the unused one
    curve = ablate_image(split, activations, extras, 0, 2, scores, _values, 0,
                         AblationSettings(ks=(1, 2, 3), random_draws=4), batch_size=5, position=0)
    assert curve.f_input == pytest.approx(_f(mean_a0), rel=1e-6)
    assert curve.f_baseline == pytest.approx(_f(0.0), rel=1e-6)
    # Zeroing unit 0 removes the whole signal; the decoy and the unused unit then add nothing.
    expected = _f(mean_a0) - _f(0.0)
    np.testing.assert_allclose(curve.deletion, [expected] * 3, rtol=1e-6)
    # Keeping unit 0 alone keeps it all: insertion(k) = f(A) - f(0) for every k >= 1.
    np.testing.assert_allclose(curve.insertion, [expected] * 3, rtol=1e-6)


def test_ablating_unused_units_changes_nothing(carrier):
    _, _, split, activations, extras = carrier
    scores = torch.tensor([0.0, 2.0, 3.0])  # the unused unit, then the decoy, last the carrier
    curve = ablate_image(split, activations, extras, 1, 2, scores, _values, 0,
                         AblationSettings(ks=(1, 2, 3), random_draws=0), batch_size=64, position=1)
    np.testing.assert_allclose(curve.deletion[:2], [0.0, 0.0], atol=1e-6)
    # k = all units: f(A) - f(0), whatever the order; the two useless units keep f(0).
    assert curve.deletion[2] == pytest.approx(curve.f_input - curve.f_baseline, rel=1e-6)
    np.testing.assert_allclose(curve.insertion[:2], [0.0, 0.0], atol=1e-6)


def test_ig_ranks_the_carrier_first_and_the_activation_the_decoy(carrier):
    """The paper's point (Sec. 3.5): the most activated unit is not the one that contributes."""
    _, x, split, activations, _ = carrier
    ig = IntegratedGradients.from_options(rule="gausslegendre", steps=16)
    result = ig(split, x, values=_values, columns=torch.zeros(2, dtype=torch.long), batch_size=64)
    ig_scores = unit_scores(result.attributions)
    activation_scores = unit_scores(activations)
    assert (ig_scores.argmax(dim=1) == 0).all()
    assert (activation_scores.argmax(dim=1) == 1).all()


def test_random_and_top_sets():
    sets = random_unit_sets(10, [1, 3, 10], draws=5, seed=2, image=7)
    assert sets.shape == (5, 3, 10)
    assert sets.sum(dim=2).tolist() == [[1, 3, 10]] * 5
    assert torch.equal(sets, random_unit_sets(10, [1, 3, 10], draws=5, seed=2, image=7))
    assert not torch.equal(sets, random_unit_sets(10, [1, 3, 10], draws=5, seed=2, image=8))
    top = top_unit_sets(torch.tensor([0.5, 2.0, 2.0, 1.0]), [1, 2, 3])
    assert top.int().tolist() == [[0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 1]]  # ties: lower unit


def test_settings_and_ks():
    assert parse_ks("1, 2,5") == (1, 2, 5)
    assert AblationSettings(ks=(20, 5, 1, 5)).ks_for(8) == [1, 5, 8]
    with pytest.raises(UsageError):
        parse_ks("1,two")
    with pytest.raises(UsageError):
        AblationSettings(ks=(0,)).validate()


def test_attribute_ablate_writes_curves_to_json_and_summary(tmp_path, capsys):
    assets = attribution_assets(tmp_path, images=2)
    out = tmp_path / "attr"
    code, stdout, err = run_cli(["attribute", assets["images"], "--model", assets["ckpt"],
                                 "--layer", "denseblock4", "--steps", 8, "--ablate", "--ablate-k",
                                 "1,5,1000", "--ablate-random", 3, "--out", out], capsys)
    assert code == 0, err
    assert "zeroing" in stdout  # the table's ablation column (its header may wrap)
    record = json.loads((out / "cxr0.json").read_text())
    ablation = record["ablation"]
    assert ablation["random_draws"] == 3 and ablation["ks"][:2] == [1, 5]
    assert ablation["ks"][-1] == record["num_units"]  # 1000 is capped at the layer's units
    # Every unit zeroed: the change is f(A) - f(0); the completeness block says the same of IG.
    assert ablation["deletion"][-1] == pytest.approx(ablation["f_input"] - ablation["f_baseline"],
                                                     rel=1e-5, abs=1e-6)
    assert ablation["f_input"] == pytest.approx(record["f_input"], rel=1e-5)
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[0]["deletion_k1"]) == pytest.approx(ablation["deletion"][0], abs=1e-7)
    assert float(rows[0]["random_deletion_k5"]) == pytest.approx(
        ablation["random_deletion"]["mean"][1], abs=1e-7)


def test_bad_ablation_options_are_one_line(tmp_path, capsys):
    assets = attribution_assets(tmp_path, images=1)
    for options in (["--ablate-k", "0"], ["--ablate-k", "x"], ["--ablate-random", "-1"]):
        code, _, err = run_cli(["attribute", assets["images"], "--model", assets["ckpt"],
                                "--layer", "denseblock4", "--ablate", *options, "--out",
                                tmp_path / "a"], capsys)
        assert code == 2 and err.count("\n") == 1, (options, err)


def test_the_record_names_the_top_labelled_unit_with_its_rank():
    """The paper (Sec. 2.3): "select the top contributing unit(s) and use their annotations (if it
    exists)" -- the top unit is often unlabelled, so the record also names the best labelled one."""
    from types import SimpleNamespace

    from cxrsem.formats.attribution import attribution_record, summary_row
    from cxrsem.formats.dissection import UnitLabel

    labels = {0: UnitLabel(0, "Heart", 0.01, False), 1: UnitLabel(1, "Lung", 0.02, False),
              2: UnitLabel(2, "Consolidation", 0.08, True)}
    dissection = SimpleNamespace(label=lambda unit: labels[unit], path="d.json", iou_threshold=0.04)
    s = np.zeros((3, 2, 2))
    s[0], s[1], s[2] = 3.0, 2.0, 1.0  # contributions 12, 8, 4: the labelled unit ranks third
    record = attribution_record(image="x.png", header={"path": "fx"}, target={"name": "score"},
                                predictions={"score": 1.0}, s=s, contrib=np.array([12.0, 8.0, 4.0]),
                                f_a=1.0, f_0=0.0, top_k=1, dissection=dissection)
    top = record["top_labelled"]
    assert top["unit"] == 2 and top["rank"] == 3 and top["concept"] == "Consolidation"
    assert top["share"] == pytest.approx(4 / 24) and np.array(top["map"]).shape == (2, 2)
    row = summary_row("x.png", record)
    assert (row["top_labelled_unit"], row["top_labelled_rank"], row["top_labelled_concept"]) == \
        (2, 3, "Consolidation")
    nothing = attribution_record(image="x.png", header={"path": "fx"}, target={"name": "score"},
                                 predictions={"score": 1.0}, s=s, contrib=np.array([12.0, 8.0, 4.0]),
                                 f_a=1.0, f_0=0.0, top_k=1, dissection=None)
    assert nothing["top_labelled"] is None
