"""TorchXRayVision's datasets as cxrsem datasets and concept sets.

The real xrv classes run on tiny copies of the real layouts (``cxrsem_xrv.sample_data``, whose CSV
headers and rows are checked against the files shipped in the torchxrayvision wheel); the results
are checked against cxrsem's contracts, against xrv's own ``pathology_masks`` and pixels, and
against labels worked out by hand from the CSV rows.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cxrsem import create_concept_set, create_dataset, list_concept_sets, list_datasets
from cxrsem.errors import DataError, UsageError
from cxrsem.imageio import load_image
from cxrsem.plugins import get_concept_set, get_dataset
from cxrsem.testing import run_cli
from cxrsem.testing.contracts import check_concept_set, check_training_dataset
from PIL import Image

from cxrsem_xrv import sample_data
from cxrsem_xrv.datasets import XrvDataWarning, box_cells, from_xrv_pixels, patient_split

DATASETS = ["xrv-nih", "xrv-chexpert", "xrv-padchest", "xrv-rsna"]
CONCEPT_SETS = ["xrv-nih-bbox", "xrv-rsna-bbox"]
ALL_IN_TRAIN = {"val_fraction": 0.0, "test_fraction": 0.0}
EVERY_ROW = {"views": "*", "unique_patients": False}
RSNA_BOXED = ["00436515-870c-4b36-a041-de91049b9ab4", "00704310-78a8-4b38-8475-49f4573b2dbb",
              "00aecb01-a116-45a2-956c-08d2fa55433f"]


def dataset(roots, name: str, split: str = "train", size: int = 16, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("error", XrvDataWarning)  # the sample data lacks no image
        return create_dataset(name, split=split, image_size=size, data_roots=roots, cache_dir="off",
                              **options)


def concept_set(roots, name: str, size: int = 16, mask_size: int = 8, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("error", XrvDataWarning)
        return create_concept_set(name, image_size=size, mask_size=mask_size, data_roots=roots,
                                  cache_dir="off", **options)


def item(ds, image_id: str) -> dict:
    return ds[ds.ids.index(image_id)]


def labels(ds, image_id: str) -> dict[str, float | None]:
    """``{pathology: target, or None where the target mask says unknown}`` of one image."""
    it = item(ds, image_id)
    target, known = it["targets"]["multilabel"], it["target_masks"]["multilabel"]
    names = ds.outputs["multilabel"]
    return {p: (float(t) if k else None) for p, t, k in zip(names, target, known, strict=True)}


# ---------------------------------------------------------------------------------------------
# Registration and the sample data


def test_registered_one_per_xrv_class():
    assert set(DATASETS) <= set(list_datasets())
    assert set(CONCEPT_SETS) <= set(list_concept_sets())
    for name in DATASETS:
        info = get_dataset(name)
        assert info.tasks == ("multilabel",) and info.needs_root
        assert {"imgpath", "csvpath", "views", "pathologies", "val_fraction", "test_fraction"} <= {
            o.name for o in info.options}
    for name in CONCEPT_SETS:
        info = get_concept_set(name)
        assert info.annotation == "boxes" and info.needs_root
        assert info.option("views").default == "*"


def _first_line(data: bytes) -> str:
    return data.decode("utf-8").split("\n", 1)[0].rstrip("\r")


def _packaged(xrv, name: str) -> bytes:
    path = Path(xrv.datasets.datapath) / name
    if name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            return archive.read(archive.namelist()[0])
    return gzip.decompress(path.read_bytes())


def test_sample_csvs_are_excerpts_of_the_real_files(xrv):
    """Header lines verbatim, rows real: the files shipped in the torchxrayvision wheel are the
    distributed ones, so the sample data is in the real layout by construction."""
    cases = [
        ("Data_Entry_2017_v2020.csv.gz", sample_data.NIH_ENTRY_HEADER, sample_data.NIH_ENTRY_ROWS),
        ("BBox_List_2017.csv.gz", sample_data.NIH_BBOX_HEADER, sample_data.NIH_BBOX_ROWS),
        ("chexpert_train.csv.gz", sample_data.CHEXPERT_HEADER, sample_data.CHEXPERT_ROWS),
        ("kaggle_stage_2_train_labels.csv.zip", sample_data.RSNA_LABELS_HEADER, sample_data.RSNA_LABEL_ROWS),
        ("kaggle_stage_2_train_images_dicom_headers.csv.gz", sample_data.RSNA_DICOM_HEADER,
         sample_data.RSNA_DICOM_HEADER_ROWS),
        ("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz", sample_data.PADCHEST_HEADER, None),
    ]
    for file, header, rows in cases:
        data = _packaged(xrv, file)
        assert _first_line(data) == header, file
        if rows is not None:
            real = set(data.decode("utf-8").replace("\r", "").split("\n"))
            assert set(rows.splitlines()) <= real, file


# ---------------------------------------------------------------------------------------------
# cxrsem's contracts


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_contract(sample_roots, name):
    ds = dataset(sample_roots, name, size=32)
    check_training_dataset(ds, name, 32)
    assert ds.outputs == {"multilabel": ds.outputs["multilabel"]}
    assert ds.targets("multilabel").shape == ds.target_masks("multilabel").shape == (len(ds), 18)
    assert name in ds.describe() and "torchxrayvision" in ds.describe()


@pytest.mark.parametrize("name", CONCEPT_SETS)
def test_concept_set_contract(sample_roots, name):
    cs = concept_set(sample_roots, name, size=32, mask_size=8)
    check_concept_set(cs, name, 32, 8)
    assert "images per concept" in cs.describe()


@pytest.mark.parametrize("name", DATASETS)
def test_images_are_cxrsem_pixels(sample_roots, name):
    """xrv's [-1024, 1024] undone: the same [0, 1] image cxrsem's own decoder makes of the file
    (8-bit PNG, JPEG, 16-bit PNG; non-square images stretched)."""
    every = EVERY_ROW if name != "xrv-rsna" else {"views": "*"}  # RSNA has one image per patientId
    ds = dataset(sample_roots, name, size=24, **every, **ALL_IN_TRAIN)
    for i in range(len(ds)):
        image = ds[i]["image"]
        assert image.dtype == torch.float32 and image.shape == (1, 24, 24)
        assert torch.allclose(image, load_image(ds.files[i], 24), atol=1e-6, rtol=0)


def test_xrv_normalisation_is_undone_exactly(xrv):
    for maxval, dtype in ((255, np.uint8), (65535, np.uint16)):
        v = np.linspace(0, maxval, 257).round().astype(dtype)[None, :]
        back = from_xrv_pixels(xrv.utils.normalize(v, maxval, reshape=True))
        assert back.shape == v.shape and back.dtype == np.float32
        assert np.abs(back - v.astype(np.float64) / maxval).max() < 1e-6
        assert back.min() == 0.0 and back.max() == 1.0


def test_dataset_pickles_for_dataloader_workers(sample_roots):
    ds = dataset(sample_roots, "xrv-nih")
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[0]["image"], ds[0]["image"]) and clone.ids == ds.ids


def test_numpy_global_generator_is_left_alone(sample_roots):
    """xrv seeds numpy's global generator in its constructors and draws from it per item."""
    np.random.seed(123)
    expected = np.random.random(3)
    np.random.seed(123)
    ds = dataset(sample_roots, "xrv-chexpert")
    ds[0]
    concept_set(sample_roots, "xrv-nih-bbox")[0]
    assert np.array_equal(np.random.random(3), expected)


# ---------------------------------------------------------------------------------------------
# Splits


def _u(seed: int, patient: str) -> float:
    return int(hashlib.sha256(f"{seed}:{patient}".encode()).hexdigest()[:16], 16) / 2**64


def test_patient_split_by_hand():
    for patient in ("1", "patient00012", "00436515-870c-4b36-a041-de91049b9ab4"):
        u = _u(7, patient)
        expected = "test" if u < 0.2 else "val" if u < 0.3 else "train"
        assert patient_split(patient, 7, 0.1, 0.2) == expected
    assert patient_split("1", 0, 0.0, 0.0) == "train"


@pytest.mark.parametrize("name", DATASETS)
def test_splits_partition_the_patients(sample_roots, name):
    fractions = {"val_fraction": 0.3, "test_fraction": 0.3}
    everything = dataset(sample_roots, name, **ALL_IN_TRAIN)
    parts = {split: dataset(sample_roots, name, split, **fractions) for split in ("train", "val", "test")}
    ids = [i for part in parts.values() for i in part.ids]
    assert sorted(ids) == sorted(everything.ids)  # every image in exactly one split
    for split, part in parts.items():
        for group in part.groups():
            assert patient_split(group, 0, 0.3, 0.3) == split
    patients = [set(part.groups()) for part in parts.values()]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    again = dataset(sample_roots, name, "test", **fractions)
    assert again.ids == parts["test"].ids  # deterministic
    other_seed = create_dataset(name, split="test", image_size=16, data_roots=sample_roots, cache_dir="off",
                                seed=1, **fractions)
    assert all(patient_split(g, 1, 0.3, 0.3) == "test" for g in other_seed.groups())


def test_a_patients_split_does_not_depend_on_the_other_rows(sample_roots):
    pa = dataset(sample_roots, "xrv-nih", "test", val_fraction=0.3, test_fraction=0.3)
    every = dataset(sample_roots, "xrv-nih", "test", val_fraction=0.3, test_fraction=0.3, **EVERY_ROW)
    assert set(pa.groups()) <= set(every.groups())


def test_empty_split_is_one_error(sample_roots):
    with pytest.raises(DataError, match=r"xrv-rsna: the val split is empty") as info:
        dataset(sample_roots, "xrv-rsna", "val", val_fraction=0.0)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Labels: xrv's harmonisation, by hand


def test_outputs_are_the_head_of_xrvs_models(sample_roots, xrv):
    ds = dataset(sample_roots, "xrv-rsna")
    assert ds.outputs["multilabel"] == list(xrv.datasets.default_pathologies)
    assert ds.outputs["multilabel"] == list(xrv.models.model_urls["densenet121-res224-all"]["labels"])


NIH14 = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
         "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax"]
NOT_IN_NIH = ["Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"]


def expect(positives=(), zeros=(), unknown=()) -> dict[str, float | None]:
    out = dict.fromkeys(zeros, 0.0)
    out.update(dict.fromkeys(positives, 1.0))
    out.update(dict.fromkeys(unknown, None))
    return out


def test_nih_labels_by_hand(sample_roots):
    # unique_patients (xrv's default): a patient's first row; views PA
    ds = dataset(sample_roots, "xrv-nih", **ALL_IN_TRAIN)
    assert "00000001_000.png" in ds.ids and "00000001_001.png" not in ds.ids
    assert "00000003_001.png" in ds.ids  # patient 3's first row in the file, not 00000003_000.png
    assert "00000004_000.png" not in ds.ids  # AP
    assert labels(ds, "00000001_000.png") == expect(["Cardiomegaly"], set(NIH14) - {"Cardiomegaly"},
                                                    NOT_IN_NIH)
    assert labels(ds, "00000002_000.png") == expect([], NIH14, NOT_IN_NIH)  # No Finding

    every = dataset(sample_roots, "xrv-nih", **ALL_IN_TRAIN, **EVERY_ROW)
    assert len(every) == len(sample_data.NIH_ENTRY_ROWS.splitlines())
    five = ["Cardiomegaly", "Effusion", "Fibrosis", "Pleural_Thickening", "Pneumothorax"]
    assert labels(every, "00000732_005.png") == expect(five, set(NIH14) - set(five), NOT_IN_NIH)

    native = dataset(sample_roots, "xrv-nih", pathologies="native", **ALL_IN_TRAIN)
    assert native.outputs["multilabel"] == NIH14  # xrv sorts them
    assert bool(native.target_masks("multilabel").all())
    chosen = dataset(sample_roots, "xrv-nih", pathologies="Effusion, Lung Opacity", **ALL_IN_TRAIN,
                     **EVERY_ROW)
    assert chosen.outputs["multilabel"] == ["Effusion", "Lung Opacity"]
    assert labels(chosen, "00000001_002.png") == {"Effusion": 1.0, "Lung Opacity": None}


def test_chexpert_labels_by_hand(sample_roots):
    every = dataset(sample_roots, "xrv-chexpert", **ALL_IN_TRAIN, **EVERY_ROW)
    nih_only = ["Infiltration", "Emphysema", "Fibrosis", "Pleural_Thickening", "Nodule", "Mass", "Hernia"]
    # -1.0 (uncertain) and blank are NaN in xrv: unknown; 'Pleural Effusion' is xrv's 'Effusion'
    assert labels(every, "train/patient00002/study2/view1_frontal.jpg") == expect(
        ["Lung Opacity", "Fracture"], [],
        ["Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Effusion", "Pneumonia", "Pneumothorax",
         "Lung Lesion", "Enlarged Cardiomediastinum"] + nih_only)
    # No Finding = 1: xrv sets every CheXpert pathology (but Support Devices) to 0
    chex = ["Atelectasis", "Consolidation", "Pneumothorax", "Edema", "Effusion", "Pneumonia", "Cardiomegaly",
            "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"]
    assert labels(every, "train/patient00001/study1/view1_frontal.jpg") == expect([], chex, nih_only)

    # xrv's unique_patients is pandas' groupby().first(): the first image of the patient, with
    # each label taken from the first of the patient's rows that has one (a quirk of xrv's)
    unique = dataset(sample_roots, "xrv-chexpert", **ALL_IN_TRAIN)
    assert "train/patient00012/study3/view1_frontal.jpg" in unique.ids
    got = labels(unique, "train/patient00012/study3/view1_frontal.jpg")
    assert got["Effusion"] == 1.0  # study3's own Pleural Effusion
    assert got["Cardiomegaly"] is None  # study2's -1.0: study3 has no Cardiomegaly label
    assert got["Lung Opacity"] == 0.0  # study2's 0.0


def test_padchest_labels_by_hand(sample_roots):
    every = dataset(sample_roots, "xrv-padchest", **ALL_IN_TRAIN, **EVERY_ROW)
    # ['consolidation', 'laminar atelectasis']: xrv maps 'consolidation' to Infiltration as well
    got = labels(every, "156420045069427647695993370673615918248_hz6jg1.png")
    assert {p for p, v in got.items() if v == 1.0} == {"Consolidation", "Infiltration", "Atelectasis"}
    assert [p for p, v in got.items() if v is None] == ["Lung Lesion", "Lung Opacity",
                                                        "Enlarged Cardiomediastinum"]
    assert labels(every, "3137231742710829928-247610802266403640553_kine6a.png")["Pleural_Thickening"] == 1.0
    # xrv drops rows without Labels and patients younger than 10
    assert "99999999999999999999999999999999999999_nolabl.png" not in every.ids
    assert "144238093861007575291420728879881361908_ajle4j.png" not in every.ids
    native = dataset(sample_roots, "xrv-padchest", pathologies="native", **ALL_IN_TRAIN, **EVERY_ROW)
    assert "Support Devices" in native.outputs["multilabel"] and "Tube" in native.outputs["multilabel"]
    assert labels(native, "184310702224069058068590499996908398488_yjqmua.png")["Support Devices"] == 1.0
    supine = dataset(sample_roots, "xrv-padchest", views="AP Supine", **ALL_IN_TRAIN)  # xrv's AP_horizontal
    assert supine.ids == ["313723174271082992847610802266403640553-4_hhi4rq.png"]


def test_rsna_labels_by_hand(sample_roots):
    every = dataset(sample_roots, "xrv-rsna", **ALL_IN_TRAIN, views="*")
    others = [p for p in every.outputs["multilabel"] if p not in ("Pneumonia", "Lung Opacity")]
    assert labels(every, "00704310-78a8-4b38-8475-49f4573b2dbb.jpg") == expect(
        ["Pneumonia", "Lung Opacity"], [], others)
    assert labels(every, "0004cfab-14fd-4e49-80ba-63a80b6bddd6.jpg") == expect(
        [], ["Pneumonia", "Lung Opacity"], others)
    pa = dataset(sample_roots, "xrv-rsna", **ALL_IN_TRAIN)
    assert "00436515-870c-4b36-a041-de91049b9ab4.jpg" not in pa.ids  # AP in xrv's DICOM headers
    assert len(every) == 13 and len(pa) == 9


def test_rsna_reads_an_explicit_dicom_header_file(sample_roots):
    local = dataset(sample_roots, "xrv-rsna", dicomcsvpath="kaggle_stage_2_train_images_dicom_headers.csv",
                    **ALL_IN_TRAIN)
    included = dataset(sample_roots, "xrv-rsna", **ALL_IN_TRAIN)
    assert local.ids == included.ids


# ---------------------------------------------------------------------------------------------
# Boxes


def test_box_cells_by_hand():
    out = np.zeros((8, 8), dtype=bool)
    box_cells(out, (128, 256, 256, 128))  # cell centres at 64, 192, 320, ... of the 1024 frame
    expected = np.zeros((8, 8), dtype=bool)
    expected[2, 1:3] = True
    assert np.array_equal(out, expected)
    tiny = np.zeros((4, 4), dtype=bool)
    box_cells(tiny, (600, 10, 3, 3))  # covers no cell centre: the cell of its centre
    assert np.argwhere(tiny).tolist() == [[0, 2]]
    edge = np.zeros((4, 4), dtype=bool)
    box_cells(edge, (-50, 1000, 60, 40))  # partly outside: its part inside the frame counts
    assert np.argwhere(edge).tolist() == [[3, 0]]


def _integer_boxes(root: Path) -> None:
    """Whole pixels at 64 px (multiples of 16 in the 1024 frame): xrv's truncation is then exact."""
    rows = ["00000830_000.png,Atelectasis,576,480,272,112", "00000830_000.png,Mass,304,400,96,128",
            "00005066_030.png,Infiltrate,528,496,240,160", "00005066_030.png,Effusion,144,720,32,64",
            "00019892_003.png,Pneumothorax,0,0,1024,96", "00000732_005.png,Cardiomegaly,432,464,400,352"]
    (root / "BBox_List_2017.csv").write_text(sample_data.NIH_BBOX_HEADER + "\n" + "\n".join(rows) + "\n")


def test_nih_boxes_equal_xrvs_pathology_masks(tmp_path, xrv):
    root = sample_data.write_nih(tmp_path / "nih")
    _integer_boxes(root)
    ours = concept_set({"xrv-nih-bbox": root}, "xrv-nih-bbox", size=16, mask_size=64)
    theirs = xrv.datasets.NIH_Dataset(imgpath=str(root / "images"),
                                      csvpath=str(root / "Data_Entry_2017_v2020.csv"),
                                      bbox_list_path=str(root / "BBox_List_2017.csv"), views=["*"],
                                      unique_patients=False, pathology_masks=True)
    assert sorted(ours.ids) == ["00000732_005.png", "00000830_000.png", "00005066_030.png",
                                "00019892_003.png"]
    names = list(theirs.csv["Image Index"])
    for j, image_id in enumerate(ours.ids):
        xrv_masks = theirs[names.index(image_id)]["pathology_masks"]
        ours_j = ours[j]["masks"].numpy()
        for c, concept in enumerate(ours.concepts):
            index = theirs.pathologies.index(concept)
            expected = xrv_masks[index][0].astype(bool) if index in xrv_masks else np.zeros((64, 64), bool)
            assert np.array_equal(ours_j[c], expected), (image_id, concept)
    assert ours.concept_counts()["Infiltration"] == 1  # the box file's 'Infiltrate'


def test_rsna_boxes_equal_xrvs_pathology_masks(tmp_path, xrv):
    root = sample_data.write_rsna(tmp_path / "rsna")
    for seed, patient in enumerate(RSNA_BOXED):  # 1024 px, like RSNA's
        Image.fromarray(sample_data.pattern(1024, 1024, seed)).save(root / "stage_2_train_images_jpg" /
                                                                    f"{patient}.jpg", quality=90)
    ours = concept_set({"xrv-rsna-bbox": root}, "xrv-rsna-bbox", size=16, mask_size=1024)
    assert ours.concepts == ["Lung Opacity"] and len(ours) == 3
    theirs = xrv.datasets.RSNA_Pneumonia_Dataset(
        imgpath=str(root / "stage_2_train_images_jpg"), csvpath=str(root / "stage_2_train_labels.csv"),
        dicomcsvpath=str(root / "kaggle_stage_2_train_images_dicom_headers.csv"), views=["*"],
        pathology_masks=True)
    names = list(theirs.csv["patientId"])
    for j, image_id in enumerate(ours.ids):
        masks = theirs[names.index(image_id.removesuffix(".jpg"))]["pathology_masks"]
        opacity = masks[theirs.pathologies.index("Lung Opacity")][0].astype(bool)
        assert np.array_equal(masks[theirs.pathologies.index("Pneumonia")][0].astype(bool), opacity)
        assert opacity.any() and np.array_equal(ours[j]["masks"][0].numpy(), opacity)


def test_every_box_is_present_at_any_mask_size(sample_roots):
    for name in CONCEPT_SETS:
        cs = concept_set(sample_roots, name, mask_size=2)
        present = np.zeros(len(cs.concepts), dtype=int)
        for i in range(len(cs)):
            present += cs[i]["masks"].flatten(1).any(1).numpy()
        assert present.tolist() == [cs.concept_counts()[c] for c in cs.concepts]


def test_nih_box_set_by_hand(sample_roots):
    cs = concept_set(sample_roots, "xrv-nih-bbox")
    assert cs.concepts == ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                           "Pneumonia", "Pneumothorax"]
    assert sorted(cs.ids) == sample_data.NIH_BOX_IMAGES  # views * and every row: all 11 boxed images
    assert cs.concept_counts() == {"Atelectasis": 3, "Cardiomegaly": 2, "Effusion": 2, "Infiltration": 2,
                                   "Mass": 3, "Nodule": 1, "Pneumonia": 2, "Pneumothorax": 2}
    assert cs.groups()[cs.ids.index("00020259_002.png")] == "20259"  # Patient ID
    sample = concept_set(sample_roots, "xrv-nih-bbox", limit=4)
    assert len(sample) == 4 and set(sample.ids) <= set(cs.ids)
    assert concept_set(sample_roots, "xrv-nih-bbox", limit=4).ids == sample.ids
    pa = concept_set(sample_roots, "xrv-nih-bbox", views="PA")
    assert "00000732_005.png" not in pa.ids and len(pa) == 6


def test_rsna_box_set_by_hand(sample_roots):
    cs = concept_set(sample_roots, "xrv-rsna-bbox")
    assert sorted(cs.ids) == [f"{p}.jpg" for p in RSNA_BOXED]
    assert cs.groups() == [i.removesuffix(".jpg") for i in cs.ids]
    assert sum(len(b) for b in cs._boxes) == 6


# ---------------------------------------------------------------------------------------------
# Local files only, one error line each


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_files_are_one_error_line_naming_them(tmp_path, sample_roots):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as info:
        dataset({"xrv-nih": empty}, "xrv-nih")
    message = _one_line(info)
    assert f"Data_Entry_2017_v2020.csv or Data_Entry_2017.csv not found in {empty}" in message
    assert "csvpath=included" in message
    with pytest.raises(DataError) as info:
        dataset(sample_roots, "xrv-nih", csvpath="elsewhere/entries.csv")
    assert str(sample_roots["xrv-nih"] / "elsewhere" / "entries.csv") in _one_line(info)
    with pytest.raises(DataError) as info:
        dataset(sample_roots, "xrv-chexpert", imgpath="CheXpert-v1.0-small")
    assert str(sample_roots["xrv-chexpert"] / "CheXpert-v1.0-small") in _one_line(info)
    with pytest.raises(DataError) as info:
        dataset(sample_roots, "xrv-rsna", dicomcsvpath=str(tmp_path / "headers.csv"))
    assert str(tmp_path / "headers.csv") in _one_line(info)
    nih = sample_data.write_nih(tmp_path / "nih")
    (nih / "BBox_List_2017.csv").unlink()
    dataset({"xrv-nih": nih}, "xrv-nih")  # a training dataset reads no boxes
    with pytest.raises(DataError) as info:
        concept_set({"xrv-nih-bbox": nih}, "xrv-nih-bbox")
    assert f"BBox_List_2017.csv not found in {nih}" in _one_line(info)


def test_a_missing_column_is_named(tmp_path):
    root = sample_data.write_nih(tmp_path / "nih")
    entry = root / "Data_Entry_2017_v2020.csv"
    entry.write_text(entry.read_text().replace("Patient Age", "Age"))
    with pytest.raises(DataError) as info:
        dataset({"xrv-nih": root}, "xrv-nih")
    assert "has no column 'Patient Age'" in _one_line(info) and "NIH_Dataset" in str(info.value)


def test_included_copy_is_an_explicit_choice(sample_roots, xrv):
    """``csvpath=included``: the full Data_Entry file shipped with xrv, resolved by cxrsem; rows
    whose image is not on disk are skipped with one warning."""
    with pytest.warns(XrvDataWarning, match=r"images listed in Data_Entry_2017_v2020.csv.gz .* not found"):
        full = create_dataset("xrv-nih", split="train", image_size=16, data_roots=sample_roots,
                              cache_dir="off", csvpath="included", **ALL_IN_TRAIN, **EVERY_ROW)
    local = dataset(sample_roots, "xrv-nih", **ALL_IN_TRAIN, **EVERY_ROW)
    assert sorted(full.ids) == sorted(local.ids)
    order = [full.ids.index(i) for i in local.ids]
    assert torch.equal(full.targets("multilabel")[order], local.targets("multilabel"))
    assert str(Path(xrv.datasets.datapath)) in full.describe()


def test_paths_cannot_leave_the_image_folder(tmp_path):
    root = sample_data.write_chexpert(tmp_path / "chexpert")
    csv = root / "train.csv"
    csv.write_text(csv.read_text() + "CheXpert-v1.0-small/train/../../../outside.jpg,Male,50,Frontal,PA,"
                                      "1.0,,,,,,,,,,,,,\n")
    with pytest.raises(DataError, match=r"outside the image folder"):
        # (with unique_patients xrv drops the row: its Path names no patientNNNNN folder)
        dataset({"xrv-chexpert": root}, "xrv-chexpert", unique_patients=False)


def test_bad_options_are_usage_errors(sample_roots):
    with pytest.raises(UsageError, match=r"unknown pathology 'Efusion'.*did you mean 'Effusion'"):
        dataset(sample_roots, "xrv-nih", pathologies="Efusion")
    with pytest.raises(UsageError, match=r"option 'views' is empty"):
        dataset(sample_roots, "xrv-nih", views=" , ")
    with pytest.raises(UsageError, match=r"val_fraction \+ test_fraction must be below 1"):
        dataset(sample_roots, "xrv-nih", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(UsageError, match=r"unknown split"):
        dataset(sample_roots, "xrv-nih", "valid")


def test_missing_and_unreadable_images(tmp_path):
    root = sample_data.write_nih(tmp_path / "nih")
    (root / "images" / "00000005_000.png").unlink()
    (root / "images" / "00000006_000.png").write_bytes(b"not a png")
    with pytest.warns(XrvDataWarning, match=r"1 images listed in Data_Entry_2017_v2020.csv .*00000005_000"):
        ds = create_dataset("xrv-nih", split="train", image_size=16, data_roots={"xrv-nih": root},
                            cache_dir="off", **ALL_IN_TRAIN)
    assert "00000005_000.png" not in ds.ids
    bad = ds.ids.index("00000006_000.png")
    with pytest.warns(XrvDataWarning, match=r"unreadable image .*00000006_000.png"):
        served = ds[bad]
    assert served["id"] == ds.ids[(bad + 1) % len(ds)]


# ---------------------------------------------------------------------------------------------
# Through the CLI


def test_cli_errors_are_one_line(tmp_path, capsys):
    empty = tmp_path / "rsna"
    empty.mkdir()
    code, _, err = run_cli(["train", "--dataset", "xrv-rsna", "--data-root", f"xrv-rsna={empty}",
                            "--epochs", "1", "--device", "cpu", "--out", tmp_path / "run"], capsys)
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("Error:")
    assert "stage_2_train_labels.csv not found" in lines[0]


def test_dissect_an_xrv_model_on_xrv_boxes(cache, sample_roots, tmp_path, capsys):
    out = tmp_path / "dissect"
    root = sample_roots["xrv-nih-bbox"]
    code, _, err = run_cli(["dissect", "--model", "xrv:densenet121-res224-all", "--layer", "denseblock4",
                            "--concepts", "xrv-nih-bbox", "--data-root", f"xrv-nih-bbox={root}",
                            "--concept-opt", "xrv-nih-bbox.views=PA", "--limit", "2", "--seg-size", "28",
                            "--quantile", "0.05", "--no-figures", "--quiet", "--device", "cpu",
                            "--out", out], capsys)
    assert code == 0, err
    result = json.loads(next(out.rglob("dissection.json")).read_text())
    assert result["concept_sets"][0]["name"] == "xrv-nih-bbox"
    assert result["num_images"] == 2


def test_train_on_an_xrv_dataset(sample_roots, tmp_path, capsys, xrv):
    out = tmp_path / "train"
    root = sample_roots["xrv-nih"]
    code, _, err = run_cli(["train", "--dataset", "xrv-nih", "--data-root", f"xrv-nih={root}",
                            "--arch", "densenet-mini", "--epochs", "1", "--batch-size", "4",
                            "--image-size", "32", "--device", "cpu", "--image-cache", "off", "--quiet",
                            "--out", out], capsys)
    assert code == 0, err
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    assert checkpoint["task"]["outputs"] == list(xrv.datasets.default_pathologies)
    assert checkpoint["train"]["dataset"] == "xrv-nih"


def test_prepared_images_are_served(sample_roots, tmp_path):
    """``cxrsem prepare`` stores xrv's decoding once; the datasets then read the stored rows."""
    from cxrsem.prepare import prepare_images

    for name in ("xrv-nih", "xrv-nih-bbox"):
        prepare_images(name, sizes=(16,), data_roots=sample_roots, cache_dir=tmp_path)
    decoded = dataset(sample_roots, "xrv-nih")
    cached = create_dataset("xrv-nih", split="train", image_size=16, data_roots=sample_roots,
                            cache_dir=tmp_path)
    assert cached.image_cache_state["images"] == len(cached) == len(decoded)
    assert "prepared image cache" in cached.describe()
    for i in range(len(cached)):
        assert (cached[i]["image"] - decoded[i]["image"]).abs().max() <= 1 / 510 + 1e-7
    boxes = create_concept_set("xrv-nih-bbox", image_size=16, mask_size=8, data_roots=sample_roots,
                               cache_dir=tmp_path)
    assert boxes.image_cache_state["images"] == len(boxes)
