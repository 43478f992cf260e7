"""``cxrsem verify`` end to end: images/s over a phantom split, beside a bare forward pass.

    .venv/bin/python benchmarks/bench_verify.py [--arch densenet-mini] [--image-size 96] \
        [--images 500] [--threads 2] [--methods ig,grad-x-act,activation,gradcam]

One process, CPU, a random-init model of ``--arch`` written as a cxrsem checkpoint (speed does not
depend on the weights), dissected first at ``denseblock4`` against the phantom (not timed) so that
concept ablation runs too.  Side by side on the same ``--images`` validation images: (1) one bare
forward pass of the model over them in batches of 16 (the data pipeline included: phantom images
are generated on the fly); (2) ``verify`` with its defaults (4 methods, IG with 16 steps, k in {1,
2, 5, 10, 20} deleted and inserted, 10 random sets per k, concept ablation with 10 random sets per
concept, 200 bootstrap resamples).  Printed: images/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from cxrsem.api import build_dataset, create_architecture, resolve_component
from cxrsem.attribution.verify import VerifySettings, verify
from cxrsem.dissection import DissectSettings, dissect
from cxrsem.engine.data import make_loader
from cxrsem.tasks import head_size
from cxrsem.testing import tiny_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="densenet-mini")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default="ig,grad-x-act,activation,gradcam")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        options = {"n_val": args.images}
        info, resolved = resolve_component("dataset", "phantom", options)
        data = build_dataset(info, resolved, split="val", image_size=args.image_size, seed=0)
        outputs = data.outputs["zones"]
        model = create_architecture(args.arch, num_outputs=head_size("zones", len(outputs)),
                                    in_channels=1).eval()
        checkpoint = tiny_checkpoint(tmp / "model.pt", model, arch=args.arch, image_size=args.image_size,
                                     task_kind="zones", outputs=outputs)
        dissect([checkpoint], ["denseblock4"], out=tmp / "d", concepts=["phantom"],
                concept_options={"phantom": {"n_images": 200}},
                settings=DissectSettings(seg_size=args.image_size), figures=False, device="cpu")
        started = time.perf_counter()
        with torch.no_grad():
            for batch in make_loader(data, batch_size=16):
                model(batch["image"])
        forward = time.perf_counter() - started

        started = time.perf_counter()
        result = verify(checkpoint, "denseblock4", "phantom", dissection=tmp / "d" / "model",
                        dataset_options=options, device="cpu",
                        settings=VerifySettings(methods=tuple(args.methods.split(","))))
        checked = time.perf_counter() - started
    print(f"{args.arch} at {args.image_size} px, {result.images} phantom val images, "
          f"{args.threads} thread(s); {len(result.concepts)} concept(s) ablated")
    print(f"  bare forward pass : {result.images / forward:8.1f} images/s ({forward:.1f} s)")
    print(f"  verify ({len(result.curves)} methods): {result.images / checked:8.1f} images/s "
          f"({checked:.1f} s, {checked / forward:.1f}x the forward pass)")


if __name__ == "__main__":
    main()
