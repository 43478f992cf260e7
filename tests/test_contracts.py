"""Contract tests over every registered component, built-in and installed (timm's ``list_models``
pattern): whatever plugin adds a dataset, concept set, loss or architecture is checked here."""

from __future__ import annotations

import warnings

import pytest

import cxrsem
from cxrsem.plugins import build_registry
from cxrsem.testing.contracts import (
    check_architecture,
    check_attribution_method,
    check_concept_set,
    check_loss,
    check_training_dataset,
)

REGISTRY = build_registry()


def names(kind: str) -> list[str]:
    return REGISTRY.names(kind)


# Sample data for the components that need a folder: the session fixtures of tests/conftest.py
# (tiny copies of each real layout).  A component not listed is skipped, saying so: add its
# fixture here when adding a component that reads files.
ROOT_FIXTURES = {"nih": "nih_root", "nih-bbox": "nih_root", "chexpert": "chexpert_root",
                 "brixia": "brixia_root", "brixia-cohen": "cohen_root", "covid-seg": "covid_root",
                 "csv-folder": "csv_folder_root", "mask-folder": "mask_folder_root",
                 **{name: "xrv_roots" for name in ("xrv-nih", "xrv-chexpert", "xrv-padchest",
                                                   "xrv-rsna", "xrv-nih-bbox", "xrv-rsna-bbox")}}
# Datasets configured by options rather than a root.
OPTION_FIXTURES = {"weak": {"nih_root": "nih_root"}}


def _data(request, kind: str, name: str) -> tuple[dict, dict]:
    """``(data_roots, options)`` for component ``name``."""
    info = REGISTRY.get(kind, name)
    options = {key: str(request.getfixturevalue(fixture))
               for key, fixture in OPTION_FIXTURES.get(name, {}).items()}
    if not info.needs_root:
        return {}, options
    if name not in ROOT_FIXTURES:
        pytest.skip(f"no sample data known for {name!r}; add a fixture to tests/test_contracts.py")
    root = request.getfixturevalue(ROOT_FIXTURES[name])
    return {name: root[name] if isinstance(root, dict) else root}, options


@pytest.fixture(scope="session")
def example_roots(tmp_path_factory):
    demo = pytest.importorskip("cxrsem_example.demo", reason="the cxrsem-example plugin is not installed")
    return demo.write_demo(tmp_path_factory.mktemp("example"), images=8, size=32)


@pytest.fixture(scope="session")
def xrv_roots(tmp_path_factory):
    """One folder per xrv dataset in its real layout (the cxrsem-xrv plugin's sample data)."""
    sample = pytest.importorskip("cxrsem_xrv.sample_data", reason="the cxrsem-xrv plugin is not installed")
    return sample.write_sample_data(tmp_path_factory.mktemp("xrv"))


@pytest.fixture(scope="session")
def csv_folder_root(example_roots):
    return example_roots[0]


@pytest.fixture(scope="session")
def mask_folder_root(example_roots):
    return example_roots[1]


def test_every_plugin_loaded_without_errors():
    broken = {p.plugin: p.error for p in REGISTRY.plugins if p.error}
    assert not broken


@pytest.mark.parametrize("name", names("dataset"))
def test_dataset_contract(name, request):
    roots, options = _data(request, "dataset", name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixtures reproduce real quirks, which are warned about
        ds = cxrsem.create_dataset(name, split="train", image_size=32, data_roots=roots, cache_dir="off",
                                   **options)
    check_training_dataset(ds, name, 32)


@pytest.mark.parametrize("name", names("concept_set"))
def test_concept_set_contract(name, request):
    roots, options = _data(request, "concept_set", name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cs = cxrsem.create_concept_set(name, image_size=32, mask_size=8, data_roots=roots,
                                       cache_dir="off", **options)
    check_concept_set(cs, name, 32, 8)


@pytest.fixture(scope="module")
def phantom_images():
    ds = cxrsem.create_dataset("phantom", split="val", image_size=64)
    import torch

    return torch.stack([ds[i]["image"] for i in range(2)])


@pytest.mark.parametrize("name", names("architecture"))
def test_architecture_contract(name, phantom_images):
    if name == "timm":  # an optional extra (cxrsem[timm]); make test does not install it
        pytest.importorskip("timm", reason="timm is not installed")
    layers = check_architecture(name, images=phantom_images)
    assert layers == list(dict.fromkeys(layers))


@pytest.mark.parametrize("name,task", [(n, t) for n in names("loss")
                                        for t in REGISTRY.get("loss", n).tasks])
def test_loss_contract(name, task):
    check_loss(name, task)


@pytest.mark.parametrize("name", names("model_source"))
def test_model_source_contract(name):
    info = REGISTRY.get("model_source", name)
    assert info.description, f"model source {name!r} has no description"
    assert all(isinstance(s, str) and s and ":" not in s for s in info.specs)


@pytest.mark.parametrize("name", names("attribution_method"))
def test_attribution_method_contract(name):
    info = REGISTRY.get("attribution_method", name)
    assert info.description, f"attribution method {name!r} has no description"
    # Few integration points where a method has them: the contract, not the accuracy, is checked.
    check_attribution_method(name, **({"steps": 4} if info.option("steps") else {}))


def test_the_checks_can_fail(phantom_images):
    from cxrsem import plugins
    from cxrsem.components import ArchitectureInfo, LossInfo
    from cxrsem.hookspecs import hookimpl

    class Bad:
        @staticmethod
        @hookimpl
        def register_architectures(register):
            register(ArchitectureInfo(name="flat", factory=lambda num_outputs, in_channels: (
                __import__("torch").nn.Sequential(__import__("torch").nn.Flatten(),
                                                  __import__("torch").nn.LazyLinear(num_outputs)))))

        @staticmethod
        @hookimpl
        def register_losses(register):
            register(LossInfo(name="constant", factory=lambda train_targets: (
                lambda logits, targets, target_mask=None: logits.sum() * 0.0)))

    plugins.register_plugin(Bad(), "bad")
    with pytest.raises(AssertionError, match="architecture 'flat': exposes no module with a 4-D output"):
        check_architecture("flat", images=phantom_images)
    with pytest.raises(AssertionError, match="loss 'constant'.*no finite, non-zero gradient"):
        check_loss("constant", "multilabel")
