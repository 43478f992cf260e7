"""The example's four components against cxrsem's data contracts (``cxrsem.testing.contracts``),
the same checks cxrsem's own suite runs over every installed plugin."""

from __future__ import annotations

import warnings

import cxrsem
import pytest
from cxrsem.testing.contracts import (
    check_architecture,
    check_concept_set,
    check_loss,
    check_training_dataset,
)

from cxrsem_example.demo import write_demo

pytestmark = pytest.mark.usefixtures("example", "one_thread")


@pytest.fixture(scope="module")
def demo_roots(tmp_path_factory):
    return write_demo(tmp_path_factory.mktemp("demo"), images=8, size=32)


def test_csv_folder(demo_roots):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # train only: the per-image hashed split may leave 8 images without a val image
        ds = cxrsem.create_dataset("csv-folder", split="train", image_size=32,
                                   data_roots={"csv-folder": demo_roots[0]})
    check_training_dataset(ds, "csv-folder", 32)


def test_mask_folder(demo_roots):
    cs = cxrsem.create_concept_set("mask-folder", image_size=32, mask_size=8,
                                   data_roots={"mask-folder": demo_roots[1]})
    check_concept_set(cs, "mask-folder", 32, 8)


def test_resnet50(tiny_phantom):
    layers = check_architecture("resnet50", images=tiny_phantom.images[:2])
    assert "layer4" in layers


@pytest.mark.parametrize("task", ["multilabel", "binary"])
def test_focal(task):
    check_loss("focal", task)
