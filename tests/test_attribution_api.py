"""``cxrsem.attribution.attribute``: targets, dissection labels, outputs, folders, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cxrsem
from cxrsem.attribution import SCHEMA, attribute, layer_integrated_gradients
from cxrsem.checkpoint import make_checkpoint, save_checkpoint, state_dict_sha256
from cxrsem.engine.preprocess import DEFAULT_NORMALIZATION, normalize
from cxrsem.errors import CxrsemError, DataError, UsageError
from cxrsem.imageio import load_image
from cxrsem.tasks import ZONE_NAMES, expected_zone_score, head_size

LAYER = "features.denseblock4"
UNITS = 69  # densenet-mini's denseblock4 with the default options
SIZE = 64

pytestmark = pytest.mark.usefixtures("one_thread")


def make_checkpoint_file(path: Path, kind: str = "multilabel", outputs=("a", "b", "c"),
                         seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = cxrsem.create_architecture("densenet-mini", num_outputs=head_size(kind, len(outputs)),
                                       in_channels=1)
    with torch.no_grad():  # trained-like statistics, so outputs differ between images
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.bias.normal_(0, 0.1)
    checkpoint = make_checkpoint(model, arch="densenet-mini", arch_kwargs={}, task_kind=kind,
                                 outputs=list(outputs), image_size=SIZE,
                                 normalization=DEFAULT_NORMALIZATION)
    save_checkpoint(path, checkpoint)
    return path


def write_png(path: Path, seed: int, mode: str = "L", shape=(80, 72)) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    blob = np.exp(-((yy - rng.uniform(10, 60)) ** 2 + (xx - rng.uniform(10, 60)) ** 2) / 150.0)
    image = np.clip(0.3 + 0.6 * blob + 0.05 * rng.standard_normal(shape), 0, 1)
    if mode == "I;16":
        Image.fromarray((image * 65535).astype(np.uint16)).save(path)
    elif mode == "RGBA":
        rgba = np.dstack([image * 255] * 3 + [np.full(shape, 255.0)]).astype(np.uint8)
        Image.fromarray(rgba, mode="RGBA").save(path)
    else:
        Image.fromarray((image * 255).astype(np.uint8)).save(path)
    return path


def write_dissection(path: Path, sha: str, labels: dict[int, tuple[str, float, bool]],
                     layer: str = LAYER, num_units: int = UNITS) -> Path:
    units = [{"unit": u, "threshold": 0.5, "concept": c, "iou": iou, "detector": det}
             for u, (c, iou, det) in labels.items()]
    data = {"schema": "cxrsem-dissection/1", "model": {"path": "model.pt", "sha256": sha},
            "layer": layer, "num_units": num_units, "settings": {"iou_threshold": 0.04},
            "units": units}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("attr")
    ckpt = make_checkpoint_file(root / "model.pt")
    images = root / "images"
    images.mkdir()
    write_png(images / "p0.png", 0)
    write_png(images / "p1.png", 1, mode="I;16")
    write_png(images / "p2.png", 2, mode="RGBA")
    sha = state_dict_sha256(torch.load(ckpt, weights_only=True)["state_dict"])
    return {"root": root, "ckpt": ckpt, "images": images, "sha": sha}


def test_single_image_outputs_and_schema(assets, tmp_path):
    image = assets["images"] / "p0.png"
    run = attribute(image, assets["ckpt"], "denseblock4", out=tmp_path / "out", steps=16)
    assert len(run) == 1 and run.path == "fx" and run.layer == LAYER
    result = run[0]
    data = json.loads((tmp_path / "out" / "p0.json").read_text())
    assert data == json.loads(json.dumps(result.data))
    assert data["schema"] == SCHEMA
    assert data["image"] == str(image)
    assert data["model"]["sha256"] == assets["sha"]
    assert (data["layer"], data["path"], data["method"], data["steps"]) == (
        LAYER, "fx", "gausslegendre", 16)
    assert set(data["prediction"]) == {"a", "b", "c"}
    # Default target of a multilabel model: its most probable output.
    best = max(data["prediction"], key=data["prediction"].get)
    assert data["target"] == {"name": best, "index": "abc".index(best), "default": True}
    assert data["num_units"] == UNITS and len(data["units"]) == UNITS
    c = data["completeness"]
    assert c["delta"] == pytest.approx(data["f_input"] - data["f_baseline"])
    assert c["abs_gap"] == pytest.approx(abs(c["sum_s"] - c["delta"]))
    assert c["rel_gap"] == pytest.approx(c["abs_gap"] / abs(c["delta"]))
    top = data["top_k"]
    assert [e["rank"] for e in top] == [1, 2, 3]
    assert [e["contribution"] for e in top] == sorted(data["units"], reverse=True)[:3]
    assert top[0]["share"] == pytest.approx(top[0]["contribution"] / sum(data["units"]))
    assert all(e["concept"] is None and not e["labelled"] for e in top)
    assert np.asarray(top[0]["map"]).shape == tuple(data["map_size"])
    # Independent recomputation from the image as the checkpoint preprocesses it.
    model = cxrsem.create_architecture("densenet-mini", num_outputs=3, in_channels=1)
    model.load_state_dict(torch.load(assets["ckpt"], weights_only=True)["state_dict"])
    model.eval()
    x = normalize(load_image(image, SIZE)[None], DEFAULT_NORMALIZATION)
    reference = layer_integrated_gradients(model, LAYER, x, data["target"]["index"], steps=16)
    assert data["f_input"] == pytest.approx(
        float(model(x).detach()[0, data["target"]["index"]]), abs=1e-5)
    np.testing.assert_allclose(data["units"], reference.unit_contributions[0].detach().numpy(),
                               rtol=1e-5, atol=1e-7)
    figure = Image.open(tmp_path / "out" / "p0.png")
    assert figure.size[0] > 3 * figure.size[1]  # the image and three unit panels in a row
    assert data["figure"] == "p0.png"
    assert (tmp_path / "out" / "config.toml").is_file()
    assert (tmp_path / "out" / "manifest.json").is_file()
    assert not (tmp_path / "out" / "summary.csv").exists()


def test_dissection_names_units_and_aggregates_concepts(assets, tmp_path):
    image = assets["images"] / "p1.png"
    plain = attribute(image, assets["ckpt"], LAYER, steps=8, top_k=3)[0]
    u1, u2, u3 = (e["unit"] for e in plain.top_k)
    other = next(u for u in range(UNITS) if u not in (u1, u2, u3))
    dissection = write_dissection(tmp_path / "d" / "dissection.json", assets["sha"], {
        u1: ("consolidation", 0.081, True),
        u2: ("effusion", 0.012, False),  # below the threshold: shown, but unlabelled
        other: ("consolidation", 0.05, True),
    })
    result = attribute(image, assets["ckpt"], LAYER, steps=8, top_k=3, dissection=dissection)[0]
    top = result.top_k
    assert [e["unit"] for e in top] == [u1, u2, u3]
    assert (top[0]["concept"], top[0]["iou"], top[0]["labelled"]) == ("consolidation", 0.081, True)
    assert (top[1]["concept"], top[1]["best_concept"], top[1]["labelled"]) == (
        "unlabelled", "effusion", False)
    assert (top[2]["concept"], top[2]["best_concept"], top[2]["iou"]) == ("unlabelled", None, None)
    concepts = {c["concept"]: c for c in result.data["concepts"]}
    units = result.data["units"]
    assert set(concepts) == {"consolidation", "unlabelled"}
    assert concepts["consolidation"]["contribution"] == pytest.approx(units[u1] + units[other])
    assert concepts["consolidation"]["units"] == 2
    assert concepts["unlabelled"]["units"] == UNITS - 2
    assert sum(c["contribution"] for c in concepts.values()) == pytest.approx(sum(units))
    assert result.data["dissection"]["iou_threshold"] == 0.04


def test_dissection_folder_is_searched_by_layer_and_checksum(assets, tmp_path):
    root = tmp_path / "dissect"
    write_dissection(root / "old" / LAYER / "dissection.json", "0" * 64, {0: ("heart", 0.2, True)})
    write_dissection(root / "model" / "features.denseblock3" / "dissection.json", assets["sha"],
                     {0: ("heart", 0.2, True)}, layer="features.denseblock3")
    write_dissection(root / "model" / LAYER / "dissection.json", assets["sha"],
                     {0: ("lung", 0.3, True)})
    result = attribute(assets["images"] / "p0.png", assets["ckpt"], LAYER, steps=4, top_k=UNITS,
                       dissection=root)[0]
    assert {e["unit"]: e["concept"] for e in result.top_k}[0] == "lung"
    (root / "model" / LAYER / "dissection.json").unlink()
    with pytest.raises(UsageError, match="no dissection of layer 'features.denseblock4'") as info:
        attribute(assets["images"] / "p0.png", assets["ckpt"], LAYER, steps=4, dissection=root)
    assert "features.denseblock3" in str(info.value)


@pytest.mark.parametrize("change, message", [
    ({"sha": "f" * 64}, "computed for another model"),
    ({"layer": "features.denseblock3"}, "is of layer 'features.denseblock3'"),
    ({"num_units": 70}, "has 70 units"),
])
def test_dissection_of_another_model_or_layer_is_an_error(assets, tmp_path, change, message):
    path = write_dissection(tmp_path / "dissection.json", change.get("sha", assets["sha"]),
                            {1: ("lung", 0.3, True)}, layer=change.get("layer", LAYER),
                            num_units=change.get("num_units", UNITS))
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=message):
        attribute(assets["images"] / "p0.png", assets["ckpt"], LAYER, steps=4, dissection=path,
                  out=out)
    assert not out.exists()


def test_not_a_dissection_file(assets, tmp_path):
    path = tmp_path / "dissection.json"
    path.write_text(json.dumps({"schema": "something-else/1"}))
    with pytest.raises(UsageError, match="not a cxrsem dissection result"):
        attribute(assets["images"] / "p0.png", assets["ckpt"], LAYER, steps=4, dissection=path)


@pytest.mark.parametrize("spec, name, index", [("b", "b", 1), ("2", "c", 2), (0, "a", 0)])
def test_target_by_name_or_index(assets, spec, name, index):
    result = attribute(assets["images"] / "p0.png", assets["ckpt"], LAYER, steps=4,
                       target=spec)[0]
    assert result.target == {"name": name, "index": index, "default": False}


@pytest.mark.parametrize("spec, message", [
    ("score", "score is defined for global-score and zones models; .*a, b, c"),
    ("pneumonia", "'pneumonia' is not an output .* a, b, c"),
    ("7", "out of range"),
])
def test_bad_target_lists_the_outputs_and_writes_nothing(assets, tmp_path, spec, message):
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=message):
        attribute(assets["images"] / "p0.png", assets["ckpt"], LAYER, target=spec, out=out)
    assert not out.exists()


def test_zones_model_explains_the_global_severity_by_default(assets, tmp_path):
    ckpt = make_checkpoint_file(tmp_path / "zones.pt", kind="zones", outputs=ZONE_NAMES, seed=1)
    image = assets["images"] / "p2.png"
    result = attribute(image, ckpt, LAYER, steps=8)[0]
    assert result.target == {"name": "score", "index": None, "default": True}
    checkpoint = torch.load(ckpt, weights_only=True)
    model = cxrsem.create_architecture("densenet-mini", num_outputs=24, in_channels=1)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    x = normalize(load_image(image, SIZE)[None], DEFAULT_NORMALIZATION)
    zones = expected_zone_score(model(x).detach())[0]
    assert result.data["f_input"] == pytest.approx(float(zones.sum()), abs=1e-5)
    assert result.data["prediction"]["score"] == pytest.approx(float(zones.sum()), abs=1e-5)
    zone = attribute(image, ckpt, LAYER, steps=8, target="C")[0]
    assert zone.target == {"name": "C", "index": 2, "default": False}
    assert zone.data["f_input"] == pytest.approx(float(zones[2]), abs=1e-5)


def test_global_score_model_default_and_score_alias(assets, tmp_path):
    ckpt = make_checkpoint_file(tmp_path / "g.pt", kind="global-score", outputs=("severity",))
    image = assets["images"] / "p0.png"
    default = attribute(image, ckpt, LAYER, steps=4)[0]
    alias = attribute(image, ckpt, LAYER, steps=4, target="score")[0]
    assert default.target == {"name": "severity", "index": 0, "default": True}
    assert alias.target["name"] == "severity"
    assert alias.data["units"] == default.data["units"]


def test_folder_mode_skips_unreadable_images_and_writes_summary(assets, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("p0.png", "p1.png", "p2.png"):
        (folder / name).write_bytes((assets["images"] / name).read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image, ignored")
    events = []
    dissection = write_dissection(tmp_path / "dissection.json", assets["sha"],
                                  {u: ("lung", 0.1, True) for u in range(0, UNITS, 2)})
    run = attribute(folder, assets["ckpt"], LAYER, steps=4, out=tmp_path / "out",
                    dissection=dissection, progress=lambda event, **info: events.append(event))
    assert len(run) == 3 and [Path(p).name for p, _ in run.skipped] == ["broken.png"]
    assert "skipped" in events and events[0] == "start" and events[-1] == "done"
    rows = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert [Path(r["image"]).name for r in rows] == ["broken.png", "p0.png", "p1.png", "p2.png"]
    assert rows[0]["status"] == "skipped" and "broken.png" in rows[0]["error"]
    assert all(r["status"] == "ok" and r["top_unit"] and r["top_concept"] for r in rows[1:])
    for name in ("p0", "p1", "p2"):
        assert (tmp_path / "out" / f"{name}.json").is_file()
        assert (tmp_path / "out" / f"{name}.png").is_file()
    concepts = list(csv.DictReader((tmp_path / "out" / "concepts.csv").open()))
    assert {r["concept"] for r in concepts} == {"lung", "unlabelled"}


def test_same_stem_in_two_folders_gets_distinct_files(assets, tmp_path):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        write_png(tmp_path / sub / "scan.png", 3 if sub == "x" else 4)
    run = attribute([tmp_path / "x", tmp_path / "y"], assets["ckpt"], LAYER, steps=4,
                    out=tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").glob("scan*.json")) == [
        "scan-2.json", "scan.json"]
    assert run[1].stem == "scan-2"


def test_single_unreadable_image_is_an_error_and_writes_nothing(assets, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="bad.png"):
        attribute(bad, assets["ckpt"], LAYER, out=out)
    assert not out.exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 1}, "at least 2"),
    ({"rule": "simpson"}, "unknown integration method"),
    ({"method": "simpson"}, "unknown attribution method 'simpson'"),
    ({"method_options": {"stpes": 4}}, "did you mean 'steps'"),
    ({"top_k": 0}, "--top-k"),
    ({"layer": "denseblock9"}, "unknown layer 'denseblock9'"),
])
def test_bad_settings_are_errors_before_any_output(assets, tmp_path, kwargs, message):
    out = tmp_path / "out"
    layer = kwargs.pop("layer", LAYER)
    with pytest.raises(CxrsemError, match=message):
        attribute(assets["images"] / "p0.png", assets["ckpt"], layer, out=out, **kwargs)
    assert not out.exists()


def test_fx_and_hook_paths_give_identical_results(assets):
    image = assets["images"] / "p0.png"
    fx = attribute(image, assets["ckpt"], LAYER, steps=6, dtype="float64")[0]
    hook = attribute(image, assets["ckpt"], LAYER, steps=6, dtype="float64", split="hook")[0]
    assert fx.path == "fx" and hook.path == "hook" and hook.data["split_note"] == "requested"
    np.testing.assert_allclose(fx.attributions, hook.attributions, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(fx.data["units"], hook.data["units"], rtol=1e-12, atol=1e-15)
    assert fx.data["completeness"]["rel_gap"] == pytest.approx(
        hook.data["completeness"]["rel_gap"], rel=1e-6, abs=1e-15)


def test_tensor_input_without_output_folder(assets, tmp_path):
    images = torch.stack([load_image(assets["images"] / f"p{i}.png", SIZE) for i in range(2)])
    run = attribute(images, assets["ckpt"], LAYER, steps=4)
    assert [r.image for r in run] == ["image-000", "image-001"]
    from_file = attribute(assets["images"] / "p1.png", assets["ckpt"], LAYER, steps=4)[0]
    np.testing.assert_allclose(run[1].data["units"], from_file.data["units"], rtol=1e-4, atol=1e-8)
    assert all(r.json_path is None for r in run)


def test_dicom_monochrome1_is_read_like_the_inverted_png(assets, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    rng = np.random.default_rng(5)
    stored = rng.integers(0, 4096, size=(64, 64)).astype(np.uint16)  # 12 bits stored
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100  # a linear modality transform
    ds.PixelData = stored.tobytes()
    dicom = tmp_path / "scan.dcm"
    ds.save_as(dicom, enforce_file_format=True)
    assert pydicom.dcmread(dicom).PhotometricInterpretation == "MONOCHROME1"
    # Without a VOI window: values over the range BitsStored allows, inverted (white = low).
    png = tmp_path / "scan.png"
    Image.fromarray(np.round((1 - stored / 4095.0) * 65535).astype(np.uint16)).save(png)
    from_dicom = attribute(dicom, assets["ckpt"], LAYER, steps=4, target="a")[0]
    from_png = attribute(png, assets["ckpt"], LAYER, steps=4, target="a")[0]
    np.testing.assert_allclose(from_dicom.input_image, from_png.input_image, atol=1e-4)
    np.testing.assert_allclose(from_dicom.data["units"], from_png.data["units"], rtol=1e-3,
                               atol=1e-6)
