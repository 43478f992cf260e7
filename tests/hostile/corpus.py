"""The hostile-input corpus: crafted checkpoints, CSVs, images, caches and names, built at test
time from the table :data:`CASES`.

Each case's ``build(tmp)`` writes what it needs under ``tmp`` and returns a :class:`Run`: the
``cxrsem`` arguments (the output folder is always ``tmp / "out"``), extra environment variables,
and what the user must see.  ``tests/test_hostile_inputs.py`` runs every case and checks the CLI's
policy: a named one-line ``Error: ...`` (or, for the cases cxrsem recovers from, one
``Warning: ...`` line and success), no traceback, nothing written outside ``--out``.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cxrsem.testing import TinyConvNet, tiny_checkpoint


@dataclass
class Run:
    args: list[str]
    fragment: str | None  # must appear in the Error (or the Warning) line; None: no message at all
    env: dict[str, str] = field(default_factory=dict)
    code: int | None = None  # None: any non-zero exit; 0: recovered (a warning is expected)


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path], Run]


# --- building blocks ------------------------------------------------------------------------------


def out(tmp: Path) -> str:
    return str(tmp / "out")


def good_checkpoint(tmp: Path) -> dict:
    path = tiny_checkpoint(tmp / "good.pt")
    data = torch.load(path, weights_only=True)
    path.unlink()
    return data


def saved(tmp: Path, data, name: str = "model.pt") -> str:
    path = tmp / name
    torch.save(data, path)
    return str(path)


def png(path: Path, size: tuple[int, int] = (40, 40), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((size[1], size[0])) * 255).astype(np.uint8)).save(path)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def declared_png(path: Path, width: int, height: int, *, rows: int | None = None) -> Path:
    """A grey 8-bit PNG whose header declares ``width x height``; ``rows`` of them are actually
    compressed in (all of them: a real, highly compressible decompression bomb)."""
    rows = height if rows is None else rows
    compressor = zlib.compressobj(9)
    line = b"\x00" + bytes(width)
    body = b"".join(compressor.compress(line) for _ in range(rows)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body)
                     + _chunk(b"IEND", b""))
    return path


def dissect_args(tmp: Path, model: str, *extra: str) -> list[str]:
    return ["dissect", "--model", model, "--layer", "features", "--concepts", "toy-blobs",
            "--concept-opt", "toy-blobs.n_images=4", "--seg-size", "8", "--out", out(tmp), "--quiet",
            "--no-figures", *extra]


def attribute_args(tmp: Path, model: str, *images: str, extra: tuple[str, ...] = ()) -> list[str]:
    if not images:
        images = (str(png(tmp / "images" / "cxr.png")),)
    return ["attribute", *images, "--model", model, "--layer", "features", "--out", out(tmp), *extra]


def train_args(tmp: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", "phantom", "--dataset-opt", "n_train=4", "--dataset-opt", "n_val=2",
            "--dataset-opt", "n_test=0", "--arch", "tiny-conv", "--image-size", "32", "--epochs", "1",
            "--batch-size", "2", "--out", out(tmp), "--quiet", *extra]


# --- hostile checkpoints, each tried at every entry point ------------------------------------------


def _text(tmp: Path) -> str:
    (tmp / "model.pt").write_text("this is not a checkpoint\n")
    return str(tmp / "model.pt")


def _arch_string(tmp: Path) -> str:
    data = good_checkpoint(tmp)
    data["arch"] = "tiny-conv"
    return saved(tmp, data)


def _size_text(tmp: Path) -> str:
    data = good_checkpoint(tmp)
    data["input"]["size"] = "abc"
    return saved(tmp, data)


def _size_huge(tmp: Path) -> str:
    data = good_checkpoint(tmp)
    data["input"]["size"] = 10**9
    return saved(tmp, data)


def _zero_std(tmp: Path) -> str:
    data = good_checkpoint(tmp)
    data["input"]["normalization"] = {"mean": [0.5], "std": [0.0]}
    return saved(tmp, data)


def _nan_weights(tmp: Path) -> str:
    data = good_checkpoint(tmp)
    name = next(iter(data["state_dict"]))
    data["state_dict"][name] = data["state_dict"][name].clone().fill_(float("nan"))
    return saved(tmp, data)


class _Gadget:
    """Stands for a class a malicious pickle would name (os.system, ...)."""

    def __reduce__(self):
        return (TinyConvNet, ())


def _code(tmp: Path) -> str:
    data = good_checkpoint(tmp)
    data["extra"] = _Gadget()
    path = tmp / "model.pt"
    torch.save(data, path)
    return str(path)


CHECKPOINTS: dict[str, tuple[Callable[[Path], str], str]] = {
    "text-file": (_text, "cannot read checkpoint"),
    "arch-is-a-string": (_arch_string, "'arch'"),
    "size-abc": (_size_text, "input.size"),
    "size-huge": (_size_huge, "input.size"),
    "zero-std": (_zero_std, "std"),
    "nan-weights": (_nan_weights, "non-finite"),
    "needs-code": (_code, "not a plain-data checkpoint"),
}


def _checkpoint_case(kind: str, entry: str) -> Case:
    make, fragment = CHECKPOINTS[kind]

    def build(tmp: Path) -> Run:
        model = make(tmp)
        if entry == "dissect":
            args = dissect_args(tmp, model)
        elif entry == "attribute":
            args = attribute_args(tmp, model)
        else:
            args = train_args(tmp, "--init", model)
        return Run(args, fragment)

    return Case(f"checkpoint-{kind}-{entry}", build)


# --- datasets: CSVs and image caches ---------------------------------------------------------------

CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,"
                   "Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,"
                   "Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices")


def chexpert_root(tmp: Path, *, header: str = CHEXPERT_HEADER, paths: tuple[str, ...] = (),
                  encoding: str = "utf-8", sex: str = "Female") -> Path:
    """A four-patient CheXpert root (train.csv + valid.csv + 40 px JPEGs)."""
    root = tmp / "chexpert"
    labels = ",".join(["1.0"] + [""] * 13)
    for name, count in (("train.csv", 4), ("valid.csv", 2)):
        rows = []
        for i in range(count):
            rel = f"{name[:5]}/patient0000{i}/study1/view1_frontal.jpg"
            image = root / rel
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((40, 40), 40 * i, dtype=np.uint8)).save(image)
            rows.append(f"CheXpert-v1.0-small/{rel},{sex},60,Frontal,AP,{labels}")
        if name == "train.csv":
            rows += [f"{p},{sex},60,Frontal,AP,{labels}" for p in paths]
        (root / name).write_bytes(("\n".join([header, *rows]) + "\n").encode(encoding))
    return root


def chexpert_train(tmp: Path, root: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", "chexpert", "--data-root", f"chexpert={root}", "--arch", "tiny-conv",
            "--image-size", "32", "--epochs", "1", "--batch-size", "2", "--out", out(tmp), "--quiet",
            *extra]


def _latin1(tmp: Path) -> Run:
    root = chexpert_root(tmp, sex="Féminin", encoding="latin-1")
    return Run(chexpert_train(tmp, root), "not UTF-8", code=0)


def _duplicate_column(tmp: Path) -> Run:
    root = chexpert_root(tmp, header=CHEXPERT_HEADER.replace("Sex,", "Path,"))
    return Run(chexpert_train(tmp, root), "'Path'")


def _outside_relative(tmp: Path) -> Run:
    png(tmp / "secret.jpg")
    root = chexpert_root(tmp, paths=("CheXpert-v1.0-small/../../secret.jpg",))
    return Run(chexpert_train(tmp, root), "outside")


def _outside_absolute(tmp: Path) -> Run:
    secret = png(tmp / "secret.jpg")
    root = chexpert_root(tmp, paths=(str(secret),))
    return Run(chexpert_train(tmp, root), "outside")


def _cache_dir_is_file(tmp: Path) -> Run:
    root = chexpert_root(tmp)
    (tmp / "cachefile").write_text("not a folder")
    return Run(["prepare", "chexpert", "--data-root", f"chexpert={root}", "--size", "32",
                "--cache-dir", str(tmp / "cachefile")], "not a folder")


def _image_cache_is_file(tmp: Path) -> Run:
    root = chexpert_root(tmp)
    (tmp / "cachefile").write_text("not a folder")
    return Run(chexpert_train(tmp, root, "--image-cache", str(tmp / "cachefile")), "not a folder")


def _prepared(tmp: Path) -> tuple[Path, Path]:
    """A CheXpert root and a cache folder that ``cxrsem prepare`` filled (16 px)."""
    from cxrsem.prepare import prepare_images

    root = chexpert_root(tmp)
    cache = tmp / "cache"
    prepare_images("chexpert", sizes=(32,), data_roots={"chexpert": root}, cache_dir=cache)
    (store,) = (cache / "images").iterdir()
    return root, store


def _cache_truncated(tmp: Path) -> Run:
    root, store = _prepared(tmp)
    data = (store / "images.npy").read_bytes()
    (store / "images.npy").write_bytes(data[: len(data) // 2])
    return Run(chexpert_train(tmp, root, "--image-cache", str(tmp / "cache")), "decoded from",
               code=0)


def _cache_wrong_shape(tmp: Path) -> Run:
    root, store = _prepared(tmp)
    np.save(store / "images.npy", np.zeros((2, 8, 8), dtype=np.uint8))
    return Run(chexpert_train(tmp, root, "--image-cache", str(tmp / "cache")), "decoded from",
               code=0)


def _cache_index_garbage(tmp: Path) -> Run:
    root, store = _prepared(tmp)
    (store / "index.json").write_text('{"format": "cxrsem-image-cache/1", "size": 16, "files": 7')
    return Run(chexpert_train(tmp, root, "--image-cache", str(tmp / "cache")), "decoded from",
               code=0)


# --- sizes that would exhaust memory ---------------------------------------------------------------


MEMORY = {"CXRSEM_MEMORY_LIMIT_GB": "64"}  # the same limit on every machine


def _image_size(tmp: Path) -> Run:
    return Run(train_args(tmp, "--image-size", "100000"), "the limit is 64.0 GiB", env=MEMORY)


def _seg_size(tmp: Path) -> Run:
    model = str(tiny_checkpoint(tmp / "m.pt"))
    args = dissect_args(tmp, model)
    args[args.index("--seg-size") + 1] = "100000"
    return Run(args, "the limit is 64.0 GiB", env=MEMORY)


def _steps_float(tmp: Path) -> Run:
    return Run(attribute_args(tmp, str(tiny_checkpoint(tmp / "m.pt")), extra=("--steps", "1e8")),
               "--steps")


def _steps_huge(tmp: Path) -> Run:
    return Run(attribute_args(tmp, str(tiny_checkpoint(tmp / "m.pt")),
                              extra=("--steps", "100000000")), "the limit is 64.0 GiB", env=MEMORY)


# --- images ----------------------------------------------------------------------------------------


def _declared_huge(tmp: Path) -> Run:
    image = declared_png(tmp / "images" / "huge.png", 30000, 30000, rows=1)
    return Run(attribute_args(tmp, str(tiny_checkpoint(tmp / "m.pt")), str(image)), "pixels")


def _bomb(tmp: Path) -> Run:
    image = declared_png(tmp / "images" / "bomb.png", 11000, 11000)
    return Run(attribute_args(tmp, str(tiny_checkpoint(tmp / "m.pt")), str(image)), "pixels")


def _huge_in_folder(tmp: Path) -> Run:
    folder = tmp / "images"
    png(folder / "a.png")
    declared_png(folder / "huge.png", 30000, 30000, rows=1)
    return Run(attribute_args(tmp, str(tiny_checkpoint(tmp / "m.pt")), str(folder)), "huge.png",
               code=0)


# --- names that are markup ------------------------------------------------------------------------


def _dollar_names(tmp: Path) -> Run:
    """``$...$`` opens matplotlib mathtext in a title: an image or concept name must show literally."""
    image = png(tmp / "images" / "x$^$y.png")
    model = str(tiny_checkpoint(tmp / "m.pt"))
    return Run(attribute_args(tmp, model, str(image)), None, code=0)


def _dollar_concept(tmp: Path) -> Run:
    model = str(tiny_checkpoint(tmp / "m.pt"))
    args = dissect_args(tmp, model, "--map-concept", "toy-blobs/blob-a=$^$", "--quantile", "0.05")
    args.remove("--no-figures")
    return Run(args, None, code=0)


def _markup_out(tmp: Path) -> Run:
    """``[/b]`` in a path is rich markup (a folder ``r[`` holding ``b]``); printing it used to raise
    MarkupError."""
    image = png(tmp / "images" / "cxr[" / "b].png")
    args = attribute_args(tmp, str(tiny_checkpoint(tmp / "m.pt")), str(image))
    args[args.index("--out") + 1] = str(tmp / "out" / "r[" / "b]")
    return Run(args, None, code=0)


def _markup_skip(tmp: Path) -> Run:
    folder = tmp / "images[" / "i]"
    png(folder / "a.png")
    (folder / "b[x].png").write_text("not an image")
    return Run(attribute_args(tmp, str(tiny_checkpoint(tmp / "m.pt")), str(folder)), "b[x].png",
               code=0)


def _markup_dissect(tmp: Path) -> Run:
    model = str(tiny_checkpoint(tmp / "m[" / "b]" / "m.pt"))
    args = dissect_args(tmp, model, "--quantile", "0.05")
    args[args.index("--out") + 1] = str(tmp / "out" / "r[" / "b]")
    return Run(args, None, code=0)


# --- names that are unknown -----------------------------------------------------------------------


def _map_concept(tmp: Path) -> Run:
    model = str(tiny_checkpoint(tmp / "m.pt"))
    return Run(dissect_args(tmp, model, "--map-concept", "toy-blobs/blob-q=lesion"),
               "unknown concept 'toy-blobs/blob-q'; did you mean")


def _disable_unknown(tmp: Path) -> Run:
    return Run(["plugins"], "phantomm", env={"CXRSEM_DISABLE_PLUGINS": "phantomm"}, code=0)


def _case_typo(tmp: Path) -> Run:
    return Run(train_args(tmp, "--dataset", "PHANTOM"), "did you mean 'phantom'?")


# --- outputs that cannot be written ---------------------------------------------------------------


def _read_only(command: str) -> Callable[[Path], Run]:
    """``--out`` inside a folder nobody may write to (root ignores permission bits: there, a file
    stands where the folder must go, the same OSError a user meets on a read-only mount)."""

    def build(tmp: Path) -> Run:
        model = str(tiny_checkpoint(tmp / "m.pt"))
        args = {"train": train_args(tmp), "dissect": dissect_args(tmp, model),
                "attribute": attribute_args(tmp, model)}[command]
        target = tmp / "out"
        if os.geteuid() == 0:
            target.write_text("a file, not a folder")
        else:
            target.mkdir()
            os.chmod(target, 0o555)
        args[args.index("--out") + 1] = str(target / "run")
        return Run(args, str(target / "run"))

    return build


# --- config files ----------------------------------------------------------------------------------


def _toml_huge(tmp: Path) -> Run:
    (tmp / "c.toml").write_text("[train]\nimage-size = 100000\nbatch-size = 2\n")
    args = train_args(tmp, "--config", str(tmp / "c.toml"))
    del args[args.index("--image-size"):args.index("--image-size") + 2]
    del args[args.index("--batch-size"):args.index("--batch-size") + 2]
    return Run(args, "--image-size 100000", env=MEMORY)


def _toml_latin1(tmp: Path) -> Run:
    (tmp / "c.toml").write_bytes('[train]\n# réglages\nepochs = 1\n'.encode("latin-1"))
    return Run(train_args(tmp, "--config", str(tmp / "c.toml")), "c.toml")


def _toml_markup(tmp: Path) -> Run:
    (tmp / "c.toml").write_text('[train]\ndataset = "[/b]phantom$^$"\n')
    args = train_args(tmp, "--config", str(tmp / "c.toml"))
    del args[args.index("--dataset"):args.index("--dataset") + 2]
    return Run(args, "unknown dataset '[/b]phantom$^$'")


def _blocked_in_out(tmp: Path) -> Run:
    """A file where dissect must create the model's folder inside an existing ``--out``: the
    OSError of writing an output becomes one line naming the path."""
    model = str(tiny_checkpoint(tmp / "m.pt"))
    (tmp / "out").mkdir()
    (tmp / "out" / "m").write_text("in the way")
    return Run(dissect_args(tmp, model), str(tmp / "out" / "m"))


CASES: list[Case] = [
    *(_checkpoint_case(kind, entry) for kind in CHECKPOINTS for entry in ("dissect", "attribute", "train")),
    Case("csv-latin1", _latin1),
    Case("csv-duplicate-column", _duplicate_column),
    Case("csv-path-outside-root", _outside_relative),
    Case("csv-absolute-path", _outside_absolute),
    Case("prepare-cache-dir-is-a-file", _cache_dir_is_file),
    Case("train-image-cache-is-a-file", _image_cache_is_file),
    Case("cache-images-truncated", _cache_truncated),
    Case("cache-images-wrong-shape", _cache_wrong_shape),
    Case("cache-index-garbage", _cache_index_garbage),
    Case("train-image-size-100000", _image_size),
    Case("dissect-seg-size-100000", _seg_size),
    Case("attribute-steps-1e8", _steps_float),
    Case("attribute-steps-100000000", _steps_huge),
    Case("png-declares-30000px", _declared_huge),
    Case("png-decompression-bomb", _bomb),
    Case("png-30000px-in-folder-skipped", _huge_in_folder),
    Case("dollar-in-image-name", _dollar_names),
    Case("dollar-in-concept-name", _dollar_concept),
    Case("markup-in-attribute-paths", _markup_out),
    Case("markup-in-skipped-path", _markup_skip),
    Case("markup-in-dissect-paths", _markup_dissect),
    Case("unknown-map-concept", _map_concept),
    Case("unknown-disabled-plugin", _disable_unknown),
    Case("case-only-typo", _case_typo),
    *(Case(f"read-only-out-{c}", _read_only(c)) for c in ("train", "dissect", "attribute")),
    Case("file-in-the-way-inside-out", _blocked_in_out),
    Case("toml-image-size-100000", _toml_huge),
    Case("toml-not-utf8", _toml_latin1),
    Case("toml-markup-and-dollar-in-a-name", _toml_markup),
]


def describe() -> str:
    return "\n".join(case.id for case in CASES)


if __name__ == "__main__":  # pragma: no cover
    print(describe())
    print(json.dumps(len(CASES)))
