"""The built-in phantom: determinism, shapes, labels against the masks, image/mask agreement,
prevalences, concept sets and registration.

Labels are checked against a naive per-pixel reimplementation of the documented rules
(docs/phantom.md), never against values the generator produced earlier.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cxrsem
from cxrsem.default_plugins.phantom import (
    create_bbox_concept_set,
    create_concept_set,
    create_dataset,
    generate,
    parse_prevalence,
)
from cxrsem.default_plugins.phantom.concepts import CONCEPTS, CONFIGURABLE, PATHOLOGIES
from cxrsem.default_plugins.phantom.generator import draw
from cxrsem.default_plugins.phantom.labels import labels_from_masks
from cxrsem.errors import UsageError
from cxrsem.plugins import get_registry
from cxrsem.tasks import ZONE_NAMES

MULTILABEL = ["Atelectasis", "Cardiomegaly", "Consolidation", "Ground Glass Opacities", "Mass",
              "Nodule", "Pleural Effusion", "Pneumothorax"]
ALL_CONCEPTS = ["Left Lung", "Right Lung", "Cardiomediastinum", "Consolidation",
                "Ground Glass Opacities", "Pleural Effusion", "Pneumothorax", "Nodule", "Mass",
                "Atelectasis", "Cardiomegaly", "Endotracheal Tube", "Central Venous Line"]
THRESHOLDS = (0.25, 0.5)  # documented zone-score cut points on the opacity fraction


def ch(name: str) -> int:
    return ALL_CONCEPTS.index(name)


def only(name: str, p: float = 1.0) -> dict[str, float]:
    """Prevalences with every finding and device off except ``name``."""
    prevalence = {c: 0.0 for c in CONFIGURABLE}
    prevalence[name] = p
    return prevalence


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def batch64():
    return generate(range(48), seed=11, split="train", image_size=64)


# --- determinism -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 50])
def test_sample_is_identical_alone_in_batch_and_in_any_order(size):
    big = generate(range(20), seed=3, split="val", image_size=size)
    for indices in ([19], [7, 2, 19], [19, 18, 0]):
        small = generate(indices, seed=3, split="val", image_size=size)
        for j, i in enumerate(indices):
            assert torch.equal(small.images[j], big.images[i])
            assert torch.equal(small.masks[j], big.masks[i])
            for task in small.labels:
                assert torch.equal(small.labels[task][j], big.labels[task][i])


def test_repeated_generation_is_identical_and_thread_count_does_not_matter():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = generate(range(9), seed=0, split="train", image_size=72)
        torch.set_num_threads(2)
        two = generate(range(9), seed=0, split="train", image_size=72)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one.images, two.images) and torch.equal(one.masks, two.masks)


def test_splits_seeds_and_indices_give_different_images():
    train = generate([0, 1], seed=0, split="train", image_size=48).images
    val = generate([0, 1], seed=0, split="val", image_size=48).images
    other_seed = generate([0, 1], seed=1, split="train", image_size=48).images
    assert (train - val).abs().mean() > 0.01
    assert (train - other_seed).abs().mean() > 0.01
    assert (train[0] - train[1]).abs().mean() > 0.01


def test_changing_one_prevalence_keeps_the_rest_of_the_image():
    base = generate(range(12), seed=4, split="train", image_size=48, prevalence=only("Nodule", 0.0))
    more = generate(range(12), seed=4, split="train", image_size=48, prevalence=only("Nodule", 1.0))
    assert not base.masks[:, ch("Nodule")].any()
    assert more.masks[:, ch("Nodule")].flatten(1).any(1).all()
    for name in ("Left Lung", "Right Lung", "Cardiomediastinum"):
        assert torch.equal(base.masks[:, ch(name)], more.masks[:, ch(name)])
    outside = ~more.masks[:, ch("Nodule")].unsqueeze(1)
    # The blur spreads a nodule by a pixel or two; far from it the images agree exactly.
    far = torch.nn.functional.max_pool2d((~outside).float(), 7, stride=1, padding=3) == 0
    assert torch.equal(base.images[far], more.images[far])


# --- shapes and ranges -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 33, 96])
def test_shapes_dtypes_and_ranges(size):
    b = generate(range(3), seed=0, split="test", image_size=size)
    assert b.images.shape == (3, 1, size, size) and b.images.dtype == torch.float32
    assert float(b.images.min()) >= 0.0 and float(b.images.max()) <= 1.0
    assert b.images.std() > 0.05  # not a blank image
    assert b.masks.shape == (3, 13, size, size) and b.masks.dtype == torch.bool
    assert list(b.concepts) == ALL_CONCEPTS == list(CONCEPTS)
    for name in ("Left Lung", "Right Lung", "Cardiomediastinum"):
        assert b.masks[:, ch(name)].flatten(1).any(1).all()
    assert b.labels["multilabel"].shape == (3, 8) and b.labels["multilabel"].dtype == torch.float32
    assert b.labels["zones"].shape == (3, 6) and b.labels["zones"].dtype == torch.long
    assert b.labels["global-score"].shape == (3, 1) and b.labels["binary"].shape == (3, 1)


def test_mask_size_differs_from_image_size():
    b = generate([0, 5], seed=0, split="test", image_size=96, mask_size=40)
    assert b.images.shape == (2, 1, 96, 96) and b.masks.shape == (2, 13, 40, 40)
    # Masks are evaluated on their own grid: the same as rendering everything at that size.
    direct = generate([0, 5], seed=0, split="test", image_size=40)
    assert torch.equal(b.masks, direct.masks)


@pytest.mark.parametrize("bad", [31, 0, -5, 64.0])
def test_too_small_or_non_integer_sizes_are_refused(bad):
    with pytest.raises(UsageError):
        generate([0], seed=0, split="train", image_size=bad)


# --- anatomy and masks agree with the pixels ---------------------------------------------------


def test_radiological_convention_right_lung_on_image_left(batch64):
    columns = torch.arange(64).float()
    for name, left_of_centre in (("Right Lung", True), ("Left Lung", False)):
        m = batch64.masks[:, ch(name)].float()
        centroid = (m.sum(1) * columns).sum(1) / m.sum((1, 2))
        assert bool(((centroid < 32) == left_of_centre).all())
    heart = batch64.masks[:, ch("Cardiomediastinum")].float()
    centroid = (heart.sum(1) * columns).sum(1) / heart.sum((1, 2))
    assert bool((centroid > 32).all())  # the heart bulges to the patient's left = image right


def test_lungs_are_dark_where_their_masks_are(batch64):
    img = batch64.images[:, 0]
    lungs = batch64.masks[:, ch("Left Lung")] | batch64.masks[:, ch("Right Lung")]
    cardio = batch64.masks[:, ch("Cardiomediastinum")]
    any_lesion = batch64.masks[:, 3:11].any(1)
    for i in range(len(img)):
        clear_lung = lungs[i] & ~any_lesion[i]
        assert img[i][clear_lung].mean() < img[i][cardio[i]].mean() - 0.15


def test_masks_at_a_coarser_size_align_with_the_image():
    cs = create_concept_set(image_size=128, mask_size=32, n_images=8)
    images, masks = cs.batch(range(8))
    pooled = torch.nn.functional.avg_pool2d(images, 4)[:, 0]  # 128 -> 32, one value per mask pixel
    lungs = masks[:, ch("Left Lung")] | masks[:, ch("Right Lung")]
    others = masks[:, ch("Cardiomediastinum")]
    lesions = masks[:, 3:11].any(1)
    for i in range(8):
        assert pooled[i][lungs[i]].mean() < pooled[i][others[i]].mean() - 0.1
        # Within the lungs' bounding box, (lesion-free) lung pixels are darker than the rest.
        rows = torch.nonzero(lungs[i].any(1)).view(-1)
        cols = torch.nonzero(lungs[i].any(0)).view(-1)
        box = torch.zeros_like(lungs[i])
        box[int(rows[0]) : int(rows[-1]) + 1, int(cols[0]) : int(cols[-1]) + 1] = True
        clear = pooled[i][lungs[i] & ~lesions[i]]
        rest = pooled[i][box & ~lungs[i]]
        darker = (clear.view(-1, 1) < rest.view(1, -1)).float().mean()  # P(lung < other)
        assert darker > 0.9, float(darker)


def test_findings_lie_inside_the_lungs():
    prevalence = dict.fromkeys(CONFIGURABLE, 0.5)
    b = generate(range(24), seed=8, split="train", image_size=64, images=False,
                 prevalence=prevalence)
    lungs = b.masks[:, ch("Left Lung")] | b.masks[:, ch("Right Lung")]
    for name in ("Consolidation", "Ground Glass Opacities", "Pleural Effusion", "Pneumothorax",
                 "Nodule", "Mass", "Atelectasis"):
        assert not (b.masks[:, ch(name)] & ~lungs).any(), name
    # Anatomy channels never overlap each other.
    assert not (b.masks[:, ch("Left Lung")] & b.masks[:, ch("Right Lung")]).any()
    assert not (lungs & b.masks[:, ch("Cardiomediastinum")]).any()


@pytest.mark.parametrize(("name", "direction", "margin"), [
    ("Consolidation", 1, 0.12),
    ("Ground Glass Opacities", 1, 0.02),
    ("Pleural Effusion", 1, 0.12),
    ("Mass", 1, 0.12),
    ("Nodule", 1, 0.03),
    ("Atelectasis", 1, 0.03),
    ("Pneumothorax", -1, 0.02),
])
def test_findings_change_the_image_inside_their_masks(name, direction, margin):
    b = generate(range(10), seed=2, split="test", image_size=96, prevalence=only(name))
    img = b.images[:, 0]
    for i in range(10):
        for lung in ("Right Lung", "Left Lung"):
            finding = b.masks[i, ch(name)] & b.masks[i, ch(lung)]
            rest = b.masks[i, ch(lung)] & ~finding
            if finding.sum() < 6:
                continue
            difference = img[i][finding].mean() - img[i][rest].mean()
            assert direction * difference > margin, (i, lung, float(difference))


def test_cardiomegaly_is_a_heart_wider_than_half_the_thorax():
    b = generate(range(40), seed=6, split="val", image_size=128, images=False,
                 prevalence=only("Cardiomegaly", 0.5))
    lungs = b.masks[:, ch("Left Lung")] | b.masks[:, ch("Right Lung")]
    heart = b.masks[:, ch("Cardiomediastinum")]
    for i in range(40):
        cols = torch.nonzero(lungs[i].any(0)).view(-1)
        thorax = int(cols[-1] - cols[0] + 1)
        widest = int(heart[i].sum(1).max())
        enlarged = bool(b.labels["multilabel"][i, MULTILABEL.index("Cardiomegaly")])
        assert (widest / thorax > 0.5) == enlarged, (i, widest / thorax)
        if enlarged:
            enlarged_heart = b.masks[i, ch("Cardiomegaly")]
            assert enlarged_heart.any() and not (enlarged_heart & ~heart[i]).any()
        else:
            assert not b.masks[i, ch("Cardiomegaly")].any()


def test_devices_appear_in_the_image():
    for name in ("Endotracheal Tube", "Central Venous Line"):
        on = generate(range(6), seed=1, split="train", image_size=96, prevalence=only(name))
        off = generate(range(6), seed=1, split="train", image_size=96, prevalence=only(name, 0.0))
        m = on.masks[:, ch(name)]
        assert m.flatten(1).any(1).all() and not off.masks[:, ch(name)].any()
        assert (on.images[:, 0][m] - off.images[:, 0][m]).mean() > 0.08


# --- labels against a naive reimplementation of the documented rules ---------------------------


def naive_zone_scores(masks: np.ndarray) -> np.ndarray:
    """BrixIA zones from the docs: thirds of each lung's own row extent, score from the opacity
    fraction of the zone's lung pixels."""
    opacity = masks[ch("Consolidation")] | masks[ch("Ground Glass Opacities")]
    scores = []
    for lung_name in ("Right Lung", "Left Lung"):
        lung = masks[ch(lung_name)]
        rows = [r for r in range(lung.shape[0]) if lung[r].any()]
        top, height = rows[0], rows[-1] - rows[0] + 1
        for zone in range(3):
            n = o = 0
            for r in rows:
                if min(2, (3 * (r - top)) // height) == zone:
                    n += int(lung[r].sum())
                    o += int((lung[r] & opacity[r]).sum())
            f = o / n
            score = 0 if o == 0 else 1 if f < THRESHOLDS[0] else 2 if f < THRESHOLDS[1] else 3
            scores.append(score)
    return np.array(scores)


def test_labels_follow_the_masks(batch64):
    masks = batch64.masks.numpy()
    labels = batch64.labels
    for i in range(len(masks)):
        present = [bool(masks[i, ch(name)].any()) for name in MULTILABEL]
        assert labels["multilabel"][i].tolist() == [float(p) for p in present]
        assert labels["binary"][i].item() == float(any(present))
        zones = naive_zone_scores(masks[i])
        assert labels["zones"][i].tolist() == zones.tolist()
        assert labels["global-score"][i].item() == float(zones.sum())
    # The public helper (from bool masks) agrees with the renderer (from its float fields).
    from_masks = labels_from_masks(batch64.masks)
    for task in labels:
        assert torch.equal(from_masks[task], labels[task])


def test_zone_is_positive_exactly_when_opacity_falls_in_it(batch64):
    masks = batch64.masks
    opacity = masks[:, ch("Consolidation")] | masks[:, ch("Ground Glass Opacities")]
    for i in range(len(masks)):
        for side, lung_name in enumerate(("Right Lung", "Left Lung")):
            lung = masks[i, ch(lung_name)]
            rows = torch.nonzero(lung.any(1)).view(-1)
            bounds = np.linspace(int(rows[0]), int(rows[-1]) + 1, 4)
            for z in range(3):
                band = torch.zeros_like(lung)
                band[int(np.ceil(bounds[z])) : int(np.ceil(bounds[z + 1]))] = True
                has = bool((opacity[i] & lung & band).any())
                assert (batch64.labels["zones"][i, 3 * side + z] > 0).item() == has


def test_opacity_in_the_right_lung_scores_zones_a_to_c_only():
    b = generate(range(40), seed=9, split="train", image_size=48, images=False,
                 prevalence=only("Consolidation"))
    right_only = ~b.masks[:, ch("Consolidation")][:, :, 24:].flatten(1).any(1)
    assert right_only.any()
    assert not b.labels["zones"][right_only][:, 3:].any()
    assert (b.labels["zones"][right_only][:, :3].sum(1) > 0).all()


@pytest.mark.parametrize("size", [32, 64])
def test_every_drawn_finding_shows_in_its_mask(size):
    prevalence = dict.fromkeys(CONFIGURABLE, 0.4)
    drawn = draw(range(150), seed=5, split="val", prevalence=prevalence).present
    b = generate(range(150), seed=5, split="val", image_size=size, images=False,
                 prevalence=prevalence)
    for name in MULTILABEL:
        assert torch.equal(drawn[name].float(), b.labels["multilabel"][:, MULTILABEL.index(name)])


def test_severity_labels_are_spread_out():
    b = generate(range(300), seed=0, split="train", image_size=48, images=False, masks=False)
    zones = b.labels["zones"]
    frequency = [(zones == k).float().mean().item() for k in range(4)]
    assert all(f > 0.04 for f in frequency), frequency  # every score occurs
    assert 0.3 < (b.labels["global-score"] > 0).float().mean() < 0.75
    assert b.labels["global-score"].max() >= 8


def test_prevalence_is_honoured_and_rare_findings_are_rare():
    n = 300
    default = generate(range(n), seed=1, split="train", image_size=40, images=False, masks=False)
    rates = dict(zip(MULTILABEL, default.labels["multilabel"].mean(0).tolist(), strict=True))
    assert rates["Pneumothorax"] < 0.07
    assert 0.2 < rates["Consolidation"] < 0.4 and 0.2 < rates["Ground Glass Opacities"] < 0.4
    custom = generate(range(n), seed=1, split="train", image_size=40, images=False, masks=False,
                      prevalence="Pneumothorax=0.5, consolidation=0.8,Mass=0")
    rates = dict(zip(MULTILABEL, custom.labels["multilabel"].mean(0).tolist(), strict=True))
    assert abs(rates["Pneumothorax"] - 0.5) < 0.08 and abs(rates["Consolidation"] - 0.8) < 0.07
    assert rates["Mass"] == 0.0
    none = generate(range(50), seed=1, split="train", image_size=40, images=False,
                    prevalence=dict.fromkeys(CONFIGURABLE, 0.0))
    assert not none.labels["binary"].any() and not none.masks[:, 3:].any()


@pytest.mark.parametrize(("text", "fragment"), [
    ("Pneumonia=0.1", "'Pneumonia'"),
    ("Consolidation=1.5", "[0, 1]"),
    ("Consolidation=-0.1", "[0, 1]"),
    ("Consolidation=abc", "number"),
    ("Consolidation", "NAME=VALUE"),
    ("Left Lung=0.5", "'Left Lung'"),
])
def test_bad_prevalence_strings_raise_usage_errors(text, fragment):
    with pytest.raises(UsageError) as info:
        parse_prevalence(text)
    assert fragment in str(info.value)
    if "Pneumonia" in text:
        assert "Pneumothorax" in str(info.value)  # the valid names are listed
    with pytest.raises(UsageError):
        create_dataset(split="train", image_size=64, prevalence=text)


# --- datasets and concept sets through the registry --------------------------------------------


def test_registered_components():
    registry = get_registry()
    assert not [p.error for p in registry.plugins if p.plugin.endswith("phantom") and p.error]
    dataset = registry.get("dataset", "phantom")
    assert set(dataset.tasks) == {"multilabel", "global-score", "zones", "binary"}
    assert dataset.defaults() == {"n_train": 1000, "n_val": 200, "n_test": 200, "prevalence": ""}
    masks = registry.get("concept_set", "phantom")
    assert registry.get("concept_set", "phantom-bbox").needs_root is False
    assert masks.defaults() == {"n_images": 400, "split": "test", "prevalence": ""}
    # Through the public API, with options as the command line passes them (strings).
    ds = cxrsem.create_dataset("phantom", split="test", image_size=32, n_test="5",
                               prevalence="Mass=1")
    assert len(ds) == 5 and ds.targets("multilabel")[:, MULTILABEL.index("Mass")].all()
    cs = cxrsem.create_concept_set("phantom-bbox", image_size=32, mask_size=16, n_images="3")
    assert len(cs) == 3 and cs[2]["masks"].shape == (8, 16, 16)


def test_dataset_items_targets_and_description():
    ds = create_dataset(split="val", image_size=48, n_val=70, seed=2)
    assert len(ds) == 70
    assert ds.outputs == {"multilabel": MULTILABEL, "zones": ZONE_NAMES,
                          "global-score": ["Global score"], "binary": ["Unhealthy"]}
    item = ds[66]
    assert item["id"] == "phantom-val-000066"
    assert item["image"].shape == (1, 48, 48) and item["image"].dtype == torch.float32
    assert set(item["targets"]) == {"multilabel", "global-score", "zones", "binary"}
    direct = generate([66], seed=2, split="val", image_size=48)
    assert torch.equal(item["image"], direct.images[0])
    for task in item["targets"]:
        all_targets = ds.targets(task)
        assert all_targets.shape[0] == 70
        assert torch.equal(all_targets[66], item["targets"][task])
        assert torch.equal(all_targets[66], direct.labels[task][0])
    batch = ds.batch([66, 3])
    assert torch.equal(batch["image"][0], item["image"]) and batch["id"][1] == "phantom-val-000003"
    assert torch.equal(ds[-1]["image"], ds[69]["image"])
    with pytest.raises(IndexError):
        ds[70]
    text = ds.describe()
    assert "val" in text and "70" in text and "Pneumothorax=0.03" in text
    item["image"].zero_()  # items are copies: the cache is unaffected
    assert ds[66]["image"].max() > 0


def test_dataset_works_with_a_dataloader():
    ds = create_dataset(split="train", image_size=40, n_train=10)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 1, 40, 40) and batch["targets"]["zones"].shape == (4, 6)


def test_bad_dataset_arguments():
    with pytest.raises(UsageError):
        create_dataset(split="holdout", image_size=64)
    with pytest.raises(UsageError):
        create_dataset(split="train", image_size=64, n_train=0)
    with pytest.raises(UsageError):
        create_concept_set(image_size=64, mask_size=32, split="holdout")


def test_concept_set_items_and_fast_batch_agree():
    cs = create_concept_set(image_size=64, mask_size=32, n_images=70)
    assert cs.concepts == ALL_CONCEPTS and len(cs) == 70
    item = cs[65]
    assert item["image"].shape == (1, 64, 64) and item["masks"].shape == (13, 32, 32)
    assert item["masks"].dtype == torch.bool and item["id"] == "phantom-test-000065"
    images, masks = cs.batch([65, 1])
    assert torch.equal(images[0], item["image"]) and torch.equal(masks[0], item["masks"])


def test_bbox_concept_set_boxes_contain_the_lesions():
    kwargs = {"image_size": 64, "mask_size": 48, "n_images": 40, "seed": 3, "prevalence":
              "Nodule=0.5,Mass=0.3,Pleural Effusion=0.4,Pneumothorax=0.3,Atelectasis=0.3"}
    boxes = create_bbox_concept_set(**kwargs)
    masks = create_concept_set(**kwargs)
    assert boxes.concepts == MULTILABEL == list(PATHOLOGIES)
    box_images, box_masks = boxes.batch(range(40))
    mask_images, seg = masks.batch(range(40))
    assert torch.equal(box_images, mask_images)  # same phantom images, other annotation
    lesion = seg[:, [ch(name) for name in MULTILABEL]]
    assert not (lesion & ~box_masks).any()  # boxes cover their lesions
    assert torch.equal(lesion.flatten(2).any(2), box_masks.flatten(2).any(2))
    assert box_masks.sum() > lesion.sum()  # ... and are more than the lesion itself
    # Single-instance findings get exactly the filled bounding rectangle of their mask.
    for name in ("Mass", "Pneumothorax", "Atelectasis", "Cardiomegaly"):
        c = MULTILABEL.index(name)
        for i in range(40):
            m = lesion[i, c]
            if not m.any():
                continue
            rows = torch.nonzero(m.any(1)).view(-1)
            cols = torch.nonzero(m.any(0)).view(-1)
            expected = torch.zeros_like(m)
            expected[int(rows[0]) : int(rows[-1]) + 1, int(cols[0]) : int(cols[-1]) + 1] = True
            assert torch.equal(box_masks[i, c], expected), (name, i)
