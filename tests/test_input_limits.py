"""The library side of the hostile-input rules (the CLI side is tests/test_hostile_inputs.py):
checkpoint validation, the memory estimates, the image pixel limit, CSV rules and name lookups."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrsem.checkpoint import MAX_INPUT_SIZE, check_finite, load_checkpoint, validate_checkpoint
from cxrsem.default_plugins._io import DataWarning, inside, read_table
from cxrsem.engine import memory
from cxrsem.errors import CheckpointError, DataError, UsageError
from cxrsem.imageio import MAX_IMAGE_PIXELS, image_size, read_image
from cxrsem.plugins import closest_name, unknown_name_message
from cxrsem.testing import tiny_checkpoint
from cxrsem.textsafe import mpl_literal, mpl_text


@pytest.fixture
def checkpoint(tmp_path):
    return torch.load(tiny_checkpoint(tmp_path / "m.pt"), weights_only=True)


def test_a_good_checkpoint_passes(checkpoint):
    assert validate_checkpoint(checkpoint, "m.pt") is checkpoint


@pytest.mark.parametrize("change, fragment", [
    (lambda c: c.update(arch="tiny-conv"), "'arch' must be a table"),
    (lambda c: c["arch"].update(kwargs=[1]), "'arch.kwargs'"),
    (lambda c: c.update(task={"kind": "multilabel", "outputs": "ab"}), "'task'"),
    (lambda c: c["input"].update(size="abc"), "'input.size'"),
    (lambda c: c["input"].update(size=True), "'input.size'"),
    (lambda c: c["input"].update(size=MAX_INPUT_SIZE + 1), "from 1 to 10,000"),
    (lambda c: c["input"].update(size=0), "'input.size'"),
    (lambda c: c["input"].update(channels=100), "'input.channels'"),
    (lambda c: c["input"].update(normalization={"mean": [0.5], "std": [0.0]}), "positive"),
    (lambda c: c["input"].update(normalization={"mean": [float("nan")], "std": [1.0]}), "finite"),
    (lambda c: c["input"].update(normalization={"mean": [], "std": [1.0]}), "non-empty"),
    (lambda c: c.update(state_dict=[1, 2]), "'state_dict'"),
    (lambda c: c["state_dict"].update(extra=3), "'extra' is a int, not a tensor"),
])
def test_malformed_checkpoints_are_one_named_error(checkpoint, change, fragment):
    change(checkpoint)
    with pytest.raises(CheckpointError, match="m.pt") as info:
        validate_checkpoint(checkpoint, "m.pt")
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_non_finite_weights_name_the_tensor(checkpoint):
    name = list(checkpoint["state_dict"])[1]
    checkpoint["state_dict"][name] = checkpoint["state_dict"][name].clone()
    checkpoint["state_dict"][name].view(-1)[0] = float("inf")
    with pytest.raises(CheckpointError, match=f"tensor '{name}' has 1 non-finite value"):
        check_finite(checkpoint["state_dict"], "m.pt")
    # integer buffers (BatchNorm's num_batches_tracked) cannot be NaN and are not checked
    check_finite({"n": torch.tensor(3)}, "m.pt")


def test_weights_only_refusal_is_our_sentence(tmp_path, checkpoint):
    checkpoint["extra"] = torch.nn.Linear(1, 1)  # a pickled module: loading it would run code
    torch.save(checkpoint, tmp_path / "code.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "code.pt")
    message = str(info.value)
    assert "is not a plain-data checkpoint: loading it would need to run code" in message
    assert "Unsupported global" in message and "\n" not in message and len(message) < 400
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "garbage.pt")


def test_memory_estimates_and_limit(monkeypatch):
    assert memory.training_bytes(224, 16) == (2 * 16 + 1) * 224 * 224 * 4
    assert memory.dissection_bytes(112, 8) == 8 * 112 * 112 * 5
    assert memory.quadrature_bytes(32, "gausslegendre") == 32 * 32 * 8
    assert memory.quadrature_bytes(32, "riemann-left") == 2 * 32 * 8
    monkeypatch.setenv("CXRSEM_MEMORY_LIMIT_GB", "1")
    memory.check_training(224, 16)  # about 25 MiB
    with pytest.raises(UsageError, match=r"--image-size 20000 with --batch-size 1 .* needs at least "
                                         r"~4.5 GiB of memory; the limit is 1.0 GiB"):
        memory.check_training(20000, 1)
    with pytest.raises(UsageError, match="--seg-size"):
        memory.check_dissection(20000, 2)
    memory.check_quadrature(None, None)
    with pytest.raises(UsageError, match="--steps 20000"):
        memory.check_quadrature(20000, None)
    monkeypatch.setenv("CXRSEM_MEMORY_LIMIT_GB", "lots")
    with pytest.raises(UsageError, match="CXRSEM_MEMORY_LIMIT_GB"):
        memory.memory_limit()
    monkeypatch.delenv("CXRSEM_MEMORY_LIMIT_GB")
    limit, _ = memory.memory_limit()
    assert limit > 2**28  # some figure for this machine


def test_pixel_limit_real_sizes_pass_and_bombs_fail(tmp_path):
    assert MAX_IMAGE_PIXELS == 10_000 * 10_000
    big = np.zeros((4300, 4300), dtype=np.uint16)  # the largest radiographs, 16-bit
    Image.fromarray(big).save(tmp_path / "big.png")
    assert image_size(tmp_path / "big.png") == (4300, 4300)
    assert read_image(tmp_path / "big.png").shape == (4300, 4300)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's own bomb warning is replaced by our check
        Image.new("L", (10_001, 10_000)).save(tmp_path / "over.png")
        with pytest.raises(DataError, match="10,001 x 10,000 = 100,010,000 pixels, above the limit"):
            image_size(tmp_path / "over.png")
        with pytest.raises(DataError, match="above the limit"):
            read_image(tmp_path / "over.png")


def test_pixel_limit_applies_to_dicom_rows_and_columns(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom import dcmread

    from cxrsem.imageio import is_dicom

    path = tmp_path / "x.dcm"
    spec = importlib.util.spec_from_file_location("b", Path(__file__).parent / "fixtures" / "builders.py")
    builders = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builders)
    builders.write_dicom(path, np.zeros((8, 8)))
    ds = dcmread(path)
    ds.Rows, ds.Columns = 12_000, 12_000  # declares 144 M pixels, holds 64
    ds.save_as(path)
    assert is_dicom(path)
    with pytest.raises(DataError, match="12,000 x 12,000"):
        read_image(path)
    with pytest.raises(DataError, match="12,000 x 12,000"):
        image_size(path)


def test_csv_rules(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("Name,Sex\nRené,M\n".encode("latin-1"))
    with pytest.warns(DataWarning, match=r"t.csv is not UTF-8 \(byte 0xe9 on line 2\); read as Latin-1"):
        table = read_table(path, dataset="d")
    assert table.rows == [["René", "M"]]
    path.write_text("Name,sex,SEX \n")
    with pytest.raises(DataError, match="names the column 'SEX' twice"):
        read_table(path, dataset="d")
    assert inside(tmp_path, tmp_path / "a" / "b.png", dataset="d", source="t.csv", row="row 1")
    for bad in (tmp_path / ".." / "x.png", "/etc/passwd", tmp_path / "a" / ".." / ".." / "x"):
        with pytest.raises(DataError, match="t.csv row 3 names .* outside the dataset folder"):
            inside(tmp_path, bad, dataset="d", source="t.csv", row="row 3")


def test_name_lookups_fold_case_first():
    assert closest_name("PHANTOM", ["phantom", "nih"]) == "phantom"
    assert closest_name("Chexpret", ["chexpert", "nih"]) == "chexpert"
    assert closest_name("zzz", ["chexpert"]) is None
    assert "did you mean 'phantom'?" in unknown_name_message("dataset", "PHANTOM", ["phantom"])


def test_disabling_an_unknown_plugin_warns(monkeypatch):
    from cxrsem.plugins import PluginWarning, build_registry

    monkeypatch.setenv("CXRSEM_DISABLE_PLUGINS", "nih,chexpret")
    with pytest.warns(PluginWarning, match=r"'chexpret' \(did you mean 'chexpert'\?\); known plugins: "):
        registry = build_registry(entry_points=False)
    assert "nih" not in registry.components["dataset"]


def test_matplotlib_text_is_literal():
    assert mpl_literal("a$^$b\\") == "a\\$^\\$b\\\\"
    assert mpl_text("x " * 40, 10).endswith("…")
