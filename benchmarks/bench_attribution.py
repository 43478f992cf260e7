"""Semantic attribution speed: cxrsem's split-model layer IG vs a bare forward pass and vs Captum.

Measured in one process, on one image, at one layer, with random weights (no download)::

    .venv/bin/python benchmarks/bench_attribution.py                    # densenet121, 224 px, CPU
    .venv/bin/python benchmarks/bench_attribution.py --device cuda --images 256

Figures (medians over ``--repeats`` after a warm-up run; wall-clock, plus process CPU time, which
drifts less than wall time on a shared machine):

- ``forward``: one bare ``model(x)`` under ``torch.no_grad()`` -- the floor;
- ``cxrsem``: :func:`cxrsem.attribution.integrated_gradients` for that image with ``--steps``
  Gauss-Legendre points, the split already built (its one-off setup is reported separately);
- ``captum``: ``captum.attr.LayerIntegratedGradients(model, layer).attribute(x, target,
  n_steps=steps)`` -- what most users reach for.  It interpolates between the layer activations of
  a zero *input* and of the image and re-runs the whole network at every step; cxrsem uses zero
  *activations* as the baseline (paper Eq. 6) and runs only the layers after L;
- ``batch``: images/s of ``integrated_gradients`` over ``--images`` phantom images (the built-in
  phantom dataset when registered, otherwise synthetic ellipse phantoms), for ``--batch-sizes``;
- ``folder``: images/s of the whole :func:`cxrsem.attribute` on a folder of ``--api-images`` of
  those images as PNGs (reading, attribution, JSON) with the Fig. 5 PNGs on (what
  ``cxrsem attribute FOLDER`` does) and off (``render=False``), side by side with the engine alone
  on the same images, in rotating rounds (see :func:`folder_runs`)::

    .venv/bin/python benchmarks/bench_attribution.py --threads 1 --only-folder --api-images 64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import cxrsem
from cxrsem.attribution import attribute, integrated_gradients
from cxrsem.checkpoint import make_checkpoint, save_checkpoint
from cxrsem.engine.preprocess import DEFAULT_NORMALIZATION, normalize
from cxrsem.engine.split import split_at


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    """Median wall and process-CPU seconds of ``fn`` after a warm-up call."""
    fn()  # warm-up (allocator, oneDNN primitives, cuDNN autotuning)
    times, cpus = [], []
    for _ in range(repeats):
        _sync(device)
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(times), statistics.median(cpus)


def interleaved(fn_a, fn_b, device: torch.device, repeats: int) -> tuple[list[float], list[float]]:
    """Alternate ``a, b, a, b, ...`` so both see the same machine load; returns both time lists.

    Ratios are taken pair by pair (``b_i / a_i``) and their median reported: on a shared machine
    the absolute times drift with the load, the ratio of neighbours much less.
    """
    fn_a()
    fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            _sync(device)
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            times.append(time.perf_counter() - start)
            CPU_TIMES.setdefault(id(fn), []).append(time.process_time() - cpu)
    return times_a, times_b


CPU_TIMES: dict[int, list[float]] = {}  # process CPU seconds per measured call, by function


def cpu_median(fn) -> float:
    return statistics.median(CPU_TIMES[id(fn)])


def phantom_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``[n, 1, size, size]`` in [0, 1]: the phantom dataset's images, or synthetic ellipses."""
    if "phantom" in cxrsem.list_datasets():
        dataset = cxrsem.create_dataset("phantom", split="train", image_size=size, seed=seed)
        return torch.stack([dataset[i]["image"] for i in range(n)])
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(n):
        img = 0.15 + 0.05 * rng.standard_normal((size, size))
        for cx in (0.3, 0.7):  # two lungs, a heart, a few opacities
            img += 0.5 * (((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.32) ** 2 < 1)
        img -= 0.3 * (((xx - 0.55) / 0.12) ** 2 + ((yy - 0.62) / 0.12) ** 2 < 1)
        for _ in range(rng.integers(0, 4)):
            c, r = rng.uniform(0.2, 0.8, 2), rng.uniform(0.03, 0.08)
            img -= 0.25 * np.exp(-(((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / r**2))
        images.append(np.clip(img, 0, 1))
    return torch.tensor(np.stack(images)[:, None], dtype=torch.float32)


def folder_runs(model: torch.nn.Module, images: torch.Tensor, args: argparse.Namespace,
                device: torch.device) -> dict:
    """``cxrsem.attribute`` on a folder of ``--api-images`` PNGs with the Fig. 5 PNGs on and off,
    and the engine alone (``integrated_gradients`` over the same images, split built, batches of
    32), in rounds that rotate the order of the three so each sees the same machine load.

    Per folder run two rates: ``end to end`` (the whole call: checkpoint load, layer probe and
    split -- about a second, once per run -- then reading, attribution, JSON and PNGs) and
    ``steady`` (from the ``start`` progress event, i.e. after the setup, to the return), the rate a
    long folder run approaches.  Ratios are taken within a round and their median reported.
    """
    from PIL import Image

    n = args.api_images
    out: dict = {"api_images": n, "api_repeats": args.api_repeats}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "images"
        folder.mkdir()
        for i in range(n):
            array = (images[i % images.shape[0], 0].numpy() * 255).astype(np.uint8)
            Image.fromarray(array).save(folder / f"phantom-{i:03d}.png")
        checkpoint = make_checkpoint(
            model.cpu(), arch=args.arch, arch_kwargs={}, task_kind="multilabel",
            outputs=[f"c{i}" for i in range(args.outputs)], image_size=args.size,
            normalization=DEFAULT_NORMALIZATION)
        model.to(device)
        save_checkpoint(tmp / "model.pt", checkpoint)
        batch = normalize(torch.cat([images] * (n // images.shape[0] + 1))[:n].to(device),
                          DEFAULT_NORMALIZATION)
        split = split_at(model, args.layer, batch[:1])
        cols = torch.zeros(n, dtype=torch.long)

        def engine() -> dict:
            _sync(device)
            start = time.perf_counter()
            integrated_gradients(split, batch, values=lambda logits: logits, columns=cols,
                                 steps=args.steps, batch_size=32)
            _sync(device)
            seconds = time.perf_counter() - start
            return {"seconds": seconds, "steady_seconds": seconds}

        def folder_run(render: bool) -> dict:
            began: list[float] = []

            def progress(event: str, **_: object) -> None:
                if event == "start":
                    began.append(time.perf_counter())

            target = tmp / ("on" if render else "off")
            shutil.rmtree(target, ignore_errors=True)
            start = time.perf_counter()
            run = attribute(folder, tmp / "model.pt", args.layer, steps=args.steps,
                            device=str(device), batch_size=32, out=target, render=render,
                            progress=progress)
            _sync(device)
            end = time.perf_counter()
            assert len(run) == n and (render == (target / "phantom-000.png").is_file())
            return {"seconds": end - start, "steady_seconds": end - began[0]}

        configs = {"engine": engine, "png_off": lambda: folder_run(False),
                   "png_on": lambda: folder_run(True)}
        names = list(configs)
        folder_run(True)  # warm-up: imports (matplotlib, PIL plugins), allocator, oneDNN
        times: dict[str, list[dict]] = {name: [] for name in names}
        for r in range(args.api_repeats):
            for name in names[r % 3:] + names[:r % 3]:
                times[name].append(configs[name]())
    rate = {name: [n / t["seconds"] for t in ts] for name, ts in times.items()}
    steady = {name: [n / t["steady_seconds"] for t in ts] for name, ts in times.items()}
    for name in names:
        out[f"{name}_images_per_s"] = statistics.median(rate[name])
        out[f"{name}_steady_images_per_s"] = statistics.median(steady[name])
        out[f"{name}_all_images_per_s"] = rate[name]
        out[f"{name}_steady_all_images_per_s"] = steady[name]

    def ratio(a: str, b: str, table: dict) -> float:
        return statistics.median(x / y for x, y in zip(table[a], table[b], strict=True))

    for a, b in (("png_on", "engine"), ("png_off", "engine"), ("png_on", "png_off")):
        out[f"{a}_over_{b}"] = ratio(a, b, rate)
        out[f"{a}_over_{b}_steady"] = ratio(a, b, steady)
    print(f"  folder of {n} PNGs, {args.api_repeats} rounds (images/s, median; end to end incl. "
          f"~1 s setup / steady after setup):")
    labels = {"engine": "engine only (integrated_gradients, batch 32)",
              "png_off": "cxrsem.attribute(render=False)",
              "png_on": "cxrsem.attribute(render=True)"}
    for name in names:
        print(f"    {labels[name]:46s} {out[f'{name}_images_per_s']:6.2f} / "
              f"{out[f'{name}_steady_images_per_s']:6.2f}")
    print(f"    PNGs on / engine  {out['png_on_over_engine']:.2f} / "
          f"{out['png_on_over_engine_steady']:.2f};  PNGs off / engine "
          f"{out['png_off_over_engine']:.2f} / {out['png_off_over_engine_steady']:.2f};  "
          f"PNGs on / off {out['png_on_over_png_off']:.2f} / "
          f"{out['png_on_over_png_off_steady']:.2f}  (median of per-round ratios)")
    return out


def engine_figures(model: torch.nn.Module, images: torch.Tensor, x: torch.Tensor,
                   args: argparse.Namespace, device: torch.device, figures: dict) -> None:
    """The per-image (forward, cxrsem, Captum) and batch-mode figures, into ``figures``."""
    target = 0
    columns = torch.tensor([target])

    def values(logits):
        return logits

    start = time.perf_counter()
    split = split_at(model, args.layer, x)
    figures["split_setup_s"] = time.perf_counter() - start
    figures["path"] = split.path

    def bare_forward():
        with torch.no_grad():
            return model(x)

    def ours():
        return integrated_gradients(split, x, values=values, columns=columns, steps=args.steps,
                                    batch_size=args.steps + 2)

    fwd_all, cxr_all = interleaved(bare_forward, ours, device, args.repeats)
    forward, cxr = statistics.median(fwd_all), statistics.median(cxr_all)
    ratio = statistics.median(b / a for a, b in zip(fwd_all, cxr_all, strict=True))
    result = ours()
    gap = float((result.total - result.delta).abs() / result.delta.abs())
    figures.update(forward_s=forward, forward_all_s=fwd_all, cxrsem_s=cxr, cxrsem_all_s=cxr_all,
                   cxrsem_over_forward=ratio, completeness_rel_gap=gap)
    print(f"{args.arch} @ {args.size}px, {args.layer}, {args.steps} steps, {device} "
          f"({torch.get_num_threads()} threads), split path: {split.path} "
          f"(setup {figures['split_setup_s']:.2f} s)")
    figures.update(forward_cpu_s=cpu_median(bare_forward), cxrsem_cpu_s=cpu_median(ours))
    print(f"  bare forward          {forward * 1e3:9.1f} ms   (median of {args.repeats}; "
          f"CPU time {figures['forward_cpu_s'] * 1e3:.0f} ms)")
    print(f"  cxrsem per image      {cxr * 1e3:9.1f} ms   = {ratio:.2f} x forward (median of "
          f"pairwise ratios; CPU time {figures['cxrsem_cpu_s'] * 1e3:.0f} ms = "
          f"{figures['cxrsem_cpu_s'] / figures['forward_cpu_s']:.2f} x; completeness gap "
          f"{gap:.1e} rel.)")

    if not args.no_captum:
        from captum.attr import LayerIntegratedGradients

        layer_module = dict(model.named_modules())[args.layer]
        lig = LayerIntegratedGradients(model, layer_module)

        def theirs():
            return lig.attribute(x, target=target, n_steps=args.steps, method="gausslegendre")

        cxr_pairs, cap_all = interleaved(ours, theirs, device, args.captum_repeats)
        cap = statistics.median(cap_all)
        cap_ratio = statistics.median(b / a for a, b in zip(cxr_pairs, cap_all, strict=True))
        figures.update(captum_s=cap, captum_all_s=cap_all, cxrsem_pair_s=cxr_pairs,
                       captum_over_cxrsem_pairwise=cap_ratio, captum_over_forward=cap / forward,
                       captum_cpu_s=cpu_median(theirs))
        figures["captum_over_cxrsem_medians"] = cap / cxr
        print(f"  captum LayerIG        {cap * 1e3:9.1f} ms   = {cap / cxr:.1f} x cxrsem's median "
              f"({cap_ratio:.1f} x pairwise), {cap / forward:.1f} x forward; CPU time "
              f"{figures['captum_cpu_s'] * 1e3:.0f} ms = "
              f"{figures['captum_cpu_s'] / figures['cxrsem_cpu_s']:.1f} x cxrsem")

    for batch_size in [int(b) for b in args.batch_sizes.split(",") if b]:
        batch = normalize(images[:args.images].to(device), DEFAULT_NORMALIZATION)
        cols = torch.full((args.images,), target)

        def run_batch(batch=batch, cols=cols, batch_size=batch_size):
            return integrated_gradients(split, batch, values=values, columns=cols,
                                        steps=args.steps, batch_size=batch_size)

        seconds, cpu = timed(run_batch, device, max(1, args.repeats // 2))
        figures[f"batch{batch_size}_images_per_s"] = args.images / seconds
        figures[f"batch{batch_size}_cpu_s_per_image"] = cpu / args.images
        print(f"  batch mode            {args.images / seconds:9.2f} images/s   "
              f"({args.images} images, --batch-size {batch_size}; CPU time "
              f"{cpu / args.images * 1e3:.0f} ms per image)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--layer", default="features.denseblock4")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--outputs", type=int, default=14)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--captum-repeats", type=int, default=2)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-sizes", default="32,64")
    parser.add_argument("--api-images", type=int, default=32,
                        help="images in the folder for the end-to-end figures (0 to skip)")
    parser.add_argument("--api-repeats", type=int, default=3,
                        help="rounds of engine / PNGs off / PNGs on for the folder figures")
    parser.add_argument("--only-folder", action="store_true",
                        help="measure only the folder figures (skip forward, Captum, batch)")
    parser.add_argument("--no-captum", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = cxrsem.create_architecture(args.arch, num_outputs=args.outputs, in_channels=1)
    model = model.eval().to(device)
    images = phantom_images(max(args.images, 1), args.size)
    x = normalize(images[:1].to(device), DEFAULT_NORMALIZATION)
    figures: dict = {
        "arch": args.arch, "layer": args.layer, "size": args.size, "steps": args.steps,
        "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu": os.cpu_count(), "loadavg_start": os.getloadavg()[0],
    }

    if not args.only_folder:
        engine_figures(model, images, x, args, device, figures)

    if args.api_images:
        figures.update(folder_runs(model, images, args, device))

    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures["loadavg_end"] = os.getloadavg()[0]
    print(f"  peak RSS {figures['peak_rss_mb']:.0f} MB; load average "
          f"{figures['loadavg_start']:.1f} -> {figures['loadavg_end']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
