"""Localisation of the top labelled unit's map against its concept's annotation: the two measures
against hand computations, and ``cxrsem verify --concepts`` on the hand-built units of
:mod:`tests.chance_models`, whose maps are known exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxrsem import hookimpl
from cxrsem.attribution.localisation import localise, pointing_game, relevance_mass, upsample_map
from cxrsem.attribution.verify import VerifySettings, verify
from cxrsem.components import ConceptSetInfo
from cxrsem.testing import run_cli, tiny_checkpoint
from tests.chance_models import CENTRE, IMAGE, MASK, MaskChannelSet, MaskPlugin, MaskReader

OUTPUTS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Ground Glass Opacities", "Mass",
           "Nodule", "Pleural Effusion", "Pneumothorax"]  # the phantom dataset's, for the curves


def _lesion():
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:5, 1:4] = True
    return mask


def test_a_map_equal_to_the_mask_points_inside_with_all_its_mass():
    mask = _lesion()
    assert localise(mask.float(), mask) == (1.0, 1.0)
    # Off the mask entirely: a copy shifted four pixels to the right.
    shifted = torch.roll(mask, shifts=4, dims=1).float()
    assert not (shifted.bool() & mask).any()
    assert localise(shifted, mask) == (0.0, 0.0)


def test_relevance_mass_counts_the_positive_part_only():
    mask = torch.tensor([[True, True], [False, False]])
    unit_map = torch.tensor([[2.0, -1.0], [1.0, -5.0]], dtype=torch.float64)
    # positive part 2, 0, 1, 0: 2 of 3 inside; the peak (2) is inside
    assert relevance_mass(unit_map, mask) == pytest.approx(2 / 3, abs=1e-15)
    assert pointing_game(unit_map, mask) == 1.0
    # A positive rescaling (Fig. 5's s / max |s|) changes neither.
    assert relevance_mass(unit_map / 2, mask) == pytest.approx(2 / 3, abs=1e-15)
    assert pointing_game(-unit_map, mask) == 0.0  # the peak of -s is 5, outside
    # No positive part: mass 0 (not 0/0); the pointing game still has a peak (-1, inside).
    negative = -unit_map.abs()
    assert relevance_mass(negative, mask) == 0.0 and relevance_mass(torch.zeros(2, 2), mask) == 0.0
    assert pointing_game(torch.tensor([[-2.0, -1.0], [-3.0, -4.0]]), mask) == 1.0


def test_a_tied_peak_scores_the_share_of_it_inside_the_mask():
    mask = torch.tensor([[True, False], [False, False]])
    assert pointing_game(torch.tensor([[1.0, 1.0], [0.0, 0.0]]), mask) == 0.5
    assert pointing_game(torch.zeros(2, 2), mask) == 0.25   # a flat map: the mask's area, chance


def test_the_map_is_upsampled_bilinearly_as_the_dissection_does():
    unit_map = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    up = upsample_map(unit_map, 4)
    # align_corners=False: output pixel i reads input (i + 0.5) / 2 - 0.5, clamped at the edges
    assert up.dtype == torch.float64 and torch.equal(up[0], torch.tensor([0, .25, .75, 1.0],
                                                                          dtype=torch.float64))
    assert torch.equal(upsample_map(unit_map, (2, 2)), unit_map.double())  # same size: identity
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:, 3] = True
    assert localise(unit_map, mask) == (1.0, pytest.approx(1 / 2, abs=1e-15))  # 1 / (.25+.75+1)
    with pytest.raises(ValueError, match="differ in size"):
        pointing_game(unit_map, mask)


class LesionSet(MaskChannelSet):
    """The mask-channel images with their lesions only (no Cardiomediastinum channel)."""

    concepts = ["Consolidation", "Effusion"]

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        return {**item, "masks": item["masks"][:2]}


class EffusionSet(MaskChannelSet):
    """The mask-channel images with Effusion only (no unit detects it)."""

    concepts = ["Effusion"]

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        return {**item, "masks": item["masks"][1:2]}


class LesionPlugin:
    @staticmethod
    @hookimpl
    def register_concept_sets(register):
        register(ConceptSetInfo(name="mask-lesions", description="mask-channel's lesions; for tests",
                                factory=lambda image_size, mask_size, root, seed: LesionSet(seed)))
        register(ConceptSetInfo(name="mask-effusion", description="mask-channel's Effusion",
                                factory=lambda image_size, mask_size, root, seed: EffusionSet(seed)))


@pytest.fixture
def reader(tmp_path, capsys, register_plugin):
    """The mask reader with 8 outputs that all weigh unit 0 by 1, the noise unit by 0 and the
    location unit by 0.1, dissected against mask-channel (unit 0: Consolidation, unit 2:
    Cardiomediastinum)."""
    register_plugin(MaskPlugin(), "mask-plugin")
    register_plugin(LesionPlugin(), "lesion-plugin")
    net = MaskReader(len(OUTPUTS))
    with torch.no_grad():
        net.classifier.weight.copy_(torch.tensor([1.0, 0.0, 0.1]).expand(len(OUTPUTS), 3))
        net.classifier.bias.zero_()
    model = tiny_checkpoint(tmp_path / "reader.pt", net, arch="mask-reader", image_size=IMAGE,
                            outputs=OUTPUTS)
    out = tmp_path / "d"
    code, _, err = run_cli(["dissect", "--model", model, "--layer", "features", "--concepts",
                            "mask-channel", "--seg-size", MASK, "--quantile", 0.01, "--no-figures",
                            "--out", out, "--quiet"], capsys)
    assert code == 0, err
    record = json.loads((out / "reader" / "features" / "dissection.json").read_text())
    mask_unit, noise_unit, location = record["units"]
    assert mask_unit["concept"] == "Consolidation" and mask_unit["detector"]
    assert location["concept"] == "Cardiomediastinum" and location["detector"]
    assert not noise_unit["detector"]
    return model, out


LIMIT = 12
READER = dict(ks=(1,), random_draws=1, limit=LIMIT, batch_size=5, resamples=40)


def _overlap(masks: torch.Tensor) -> float:
    """Share of the location unit's fixed rectangle inside this image's Cardiomediastinum."""
    return float(masks[2, CENTRE, CENTRE].double().mean())


def test_the_mask_unit_s_map_lies_on_the_consolidation_it_detects(reader):
    model, dissection = reader
    result = verify(model, "features", "phantom", dissection=dissection, concepts=["mask-lesions"],
                    dataset_options={"n_val": 4}, device="cpu",
                    settings=VerifySettings(methods=("activation", "grad-x-act"), **READER))
    local = result.localisation
    assert local.concept_sets == ["mask-lesions"] and local.images == LIMIT and local.mask_size == MASK
    # Cardiomediastinum is not annotated here: unit 0 is the only eligible unit, on the images
    # that contain Consolidation (every fourth), and its map *is* their mask.
    consolidation = sum(1 for i in range(LIMIT) if i % 4 == 0)
    for row in local.methods:
        assert row.images == consolidation and row.concepts == {"Consolidation": consolidation}
        for estimate in (row.pointing_game, row.relevance_mass):
            assert (estimate.value, estimate.low, estimate.high) == (1.0, 1.0, 1.0)


def test_the_top_unit_follows_each_method_s_ranking(reader):
    model, dissection = reader
    result = verify(model, "features", "phantom", dissection=dissection, concepts=["mask-channel"],
                    dataset_options={"n_val": 4}, device="cpu",
                    settings=VerifySettings(methods=("activation", "grad-x-act"), **READER))
    data = MaskChannelSet(seed=0)  # verify's seed: the images it localised on
    masks = [data[i]["masks"] for i in range(LIMIT)]
    overlap = np.array([_overlap(m) for m in masks])
    has = np.array([bool(m[0].any()) for m in masks])
    activation, gradient = result.localisation.methods
    # activation: sum |A| ranks the 6x6 location unit (36) above the 4x5 Consolidation unit
    # (20) on every image, and Cardiomediastinum is in every image: its plateau's share inside
    # that image's (shifted) rectangle, for both measures (the map is 1 on the rectangle).
    assert activation.images == LIMIT and activation.concepts == {"Cardiomediastinum": LIMIT}
    assert activation.pointing_game.value == pytest.approx(overlap.mean(), abs=1e-12)
    assert activation.relevance_mass.value == pytest.approx(overlap.mean(), abs=1e-12)
    assert overlap.mean() < 1
    # grad-x-act: the output weighs unit 0 ten times more (20 · 1 > 36 · 0.1), so where there is
    # Consolidation its unit is chosen and scores 1; elsewhere the location unit, as above.
    expected = np.where(has, 1.0, overlap).mean()
    assert gradient.images == LIMIT
    assert gradient.concepts == {"Cardiomediastinum": int((~has).sum()),
                                 "Consolidation": int(has.sum())}
    assert gradient.pointing_game.value == pytest.approx(expected, abs=1e-12)
    assert gradient.relevance_mass.value == pytest.approx(expected, abs=1e-12)
    for row in (activation, gradient):
        for estimate in (row.pointing_game, row.relevance_mass):
            assert 0 <= estimate.low <= estimate.value <= estimate.high <= 1
    assert any("pointing game" in s for s in result.sentences())


def test_concepts_the_dissection_does_not_label_are_refused(reader):
    from cxrsem.errors import UsageError

    model, dissection = reader
    with pytest.raises(UsageError, match="labels no unit with a concept of mask-effusion "
                                         r"\(Effusion\); its labelled concepts: Cardio"):
        verify(model, "features", "phantom", dissection=dissection, concepts=["mask-effusion"],
               dataset_options={"n_val": 4}, device="cpu",
               settings=VerifySettings(methods=("activation",), **READER))
    with pytest.raises(UsageError, match="needs --dissection"):
        verify(model, "features", "phantom", concepts=["mask-channel"], device="cpu")
