"""Helpers of the report tests: hand-made result files and a headless Chromium driven over the
Chrome DevTools Protocol (standard library only).

Also a tool: ``python -m tests.report_fixtures REPORT.html SHOT.png [WIDTH HEIGHT] [--all]`` writes a
screenshot of a report (the README's; ``--all``: also the whole page in bands) and prints the
console errors it saw.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PHANTOM = ["Left Lung", "Right Lung", "Cardiomediastinum", "Consolidation", "Nodule"]


# -- hand-made result files ------------------------------------------------------------------------

def dissection_doc(units: Sequence[tuple[str | None, float]], *, layer: str = "features.denseblock4",
                   model_path: str = "/runs/a/epoch-004.pt", epoch: int | None = 4,
                   dataset: str = "phantom", loss: str = "mae-scce", init: str = "random",
                   sha256: str | None = None, iou_threshold: float = 0.04, seg_size: int = 48,
                   quantile: float = 0.005, concepts: Sequence[str] | None = None,
                   images: int = 20) -> dict[str, Any]:
    """A ``cxrsem-dissection/1`` document: ``units`` is ``[(best concept, its IoU), ...]``."""
    names = list(concepts) if concepts is not None else list(
        dict.fromkeys([c for c, _ in units if c is not None] + PHANTOM))
    rows = []
    for k, (concept, iou) in enumerate(units):
        rows.append({"unit": k, "threshold": 1.0, "concept": concept, "iou": iou,
                     "detector": concept is not None and iou > iou_threshold,
                     "ious": [iou if c == concept else 0.0 for c in names], "top_images": [0, 1, 2, 3]})
    detectors = {c: sum(1 for r in rows if r["detector"] and r["concept"] == c) for c in names}
    return {
        "schema": "cxrsem-dissection/1",
        "model": {"path": model_path, "sha256": sha256 or f"sha-{Path(model_path).stem}-{epoch}",
                  "arch": "densenet-mini", "task": {"kind": "zones", "outputs": list("ABCDEF")},
                  "input": {"size": 64, "channels": 1, "normalization": None},
                  "train": {"dataset": dataset, "loss": loss, "init": init, "epoch": epoch,
                            "metrics": {"mae_mean": 0.3, "val_loss": 0.4}},
                  "cxrsem_version": "0.1.0"},
        "layer": layer, "num_units": len(rows), "feature_shape": [len(rows), 2, 2],
        "settings": {"quantile": quantile, "threshold_images": images, "iou_threshold": iou_threshold,
                     "seg_size": seg_size},
        "concept_sets": [{"name": "phantom", "concepts": names}],
        "concepts": [{"name": c, "images": images} for c in names],
        "num_images": images, "units": rows, "detectors": detectors,
        "num_detectors": sum(detectors.values()), "unique_concepts": sum(1 for v in detectors.values() if v),
    }


def png_bytes(seed: int = 0, size: tuple[int, int] = (120, 60)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_dissection(root: Path, model_stem: str, doc: dict[str, Any], *, figures: bool = True) -> Path:
    """``root/<model_stem>/<layer>/dissection.json`` and, with ``figures``, a unit PNG per detector."""
    folder = root / model_stem / doc["layer"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dissection.json").write_text(json.dumps(doc), encoding="utf-8")
    if figures:
        (folder / "units").mkdir(exist_ok=True)
        for row in doc["units"]:
            if row["detector"]:
                (folder / "units" / f"unit-{row['unit']:04d}.png").write_bytes(png_bytes(row["unit"]))
    return folder / "dissection.json"


def attribution_doc(dissection: dict[str, Any], image: str, top: Sequence[int], *,
                    contributions: Sequence[float] | None = None) -> dict[str, Any]:
    """A ``cxrsem-attribution/1`` document for the model and layer of ``dissection``."""
    n = dissection["num_units"]
    units = list(contributions) if contributions is not None else [0.01] * n
    for rank, unit in enumerate(top):
        units[unit] = max(units[unit], 1.0 - 0.1 * rank)
    total = sum(units)
    top_k = []
    for rank, unit in enumerate(top, start=1):
        row = dissection["units"][unit]
        top_k.append({"rank": rank, "unit": unit, "contribution": units[unit], "share": units[unit] / total,
                      "concept": row["concept"] if row["detector"] else "unlabelled",
                      "best_concept": row["concept"], "iou": row["iou"], "labelled": row["detector"],
                      "dissected": True, "map": [[0.1, 0.2], [0.3, 0.4]]})
    return {
        "schema": "cxrsem-attribution/1", "image": image,
        "model": {"path": dissection["model"]["path"], "sha256": dissection["model"]["sha256"],
                  "arch": "densenet-mini", "task": "zones"},
        "layer": dissection["layer"], "path": "fx", "method": "gausslegendre", "steps": 8,
        "target": {"name": "score", "index": None, "default": True},
        "prediction": {"score": 3.2}, "f_input": 3.2, "f_baseline": 1.0,
        "completeness": {"sum_s": 2.2, "delta": 2.2, "abs_gap": 0.0, "rel_gap": 1e-4},
        "num_units": n, "map_size": [2, 2], "units": units, "top_k": top_k, "concepts": [],
        "dissection": {"path": "x", "iou_threshold": 0.04}, "figure": f"{Path(image).stem}.png",
    }


def write_attribution(folder: Path, doc: dict[str, Any], *, figure: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stem = Path(doc["image"]).stem
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    if figure:
        (folder / f"{stem}.png").write_bytes(png_bytes(len(stem), (200, 70)))
    return path


# -- headless Chromium over the DevTools protocol ------------------------------------------------------

def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


class Chromium:
    """A headless Chromium with ``--remote-debugging-pipe``: commands on fd 3, replies on fd 4,
    JSON messages separated by NUL bytes.  Console messages, uncaught exceptions, failed loads and
    JavaScript dialogs of the page are collected in :attr:`events`."""

    def __init__(self, binary: str, width: int = 1280, height: int = 2000, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._next = 0
        self._buffer = b""
        self._profile = tempfile.mkdtemp(prefix="cxrsem-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire() -> None:  # in the child: the pipe ends become fds 3 and 4
            a = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-extensions", "--disable-dev-shm-usage", "--mute-audio",
                "--hide-scrollbars", f"--user-data-dir={self._profile}", "--remote-debugging-pipe",
                f"--window-size={width},{height}", "about:blank"]
        # stderr to a file: a pipe nobody reads could fill up and stall the browser.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._log, preexec_fn=wire, close_fds=False)
        os.close(to_child_r)
        os.close(from_child_w)
        self.session: str | None = None

    # protocol -----------------------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from Chromium")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium exited: {self._stderr()}")
                self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def _stderr(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: bool = True) -> dict:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._event(reply)

    def _event(self, message: dict[str, Any]) -> None:
        if "method" not in message:
            return
        self.events.append(message)
        if message["method"] == "Page.javascriptDialogOpening":  # never leave the page blocked
            self._next += 1
            os.write(self._to_child, json.dumps({"id": self._next, "method": "Page.handleJavaScriptDialog",
                                                 "params": {"accept": True},
                                                 "sessionId": self.session}).encode() + b"\0")

    def wait_for(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        for message in self.events:
            if message["method"] == method:
                return message
        while True:
            message = self._read_message(deadline)
            self._event(message)
            if message.get("method") == method:
                return message

    # page -------------------------------------------------------------------------------------------
    def open(self, url: str, width: int = 1280, height: int = 2000) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        self.send("Page.navigate", {"url": url})
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluation failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, top: float | None = None, height: float | None = None) -> bytes:
        """The viewport, or the page's band ``[top, top + height)`` in CSS pixels."""
        params: dict[str, Any] = {"format": "png"}
        if top is not None:
            width = self.evaluate("document.documentElement.clientWidth")
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": top, "width": width, "height": height or 1600, "scale": 1})
        return base64.b64decode(self.send("Page.captureScreenshot", params)["data"])

    def problems(self) -> list[str]:
        """Console errors/warnings, uncaught exceptions, failed loads and dialogs, one line each."""
        found = []
        for message in self.events:
            method, params = message["method"], message.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                found.append(f"console.{params['type']}: {text}")
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                text = details.get("exception", {}).get("description") or details.get("text")
                found.append(f"uncaught: {text}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
                found.append(f"log {params['entry']['level']}: {params['entry'].get('text')}")
            elif method == "Page.javascriptDialogOpening":
                found.append(f"dialog {params.get('type')}: {params.get('message')}")
        return found

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.session = None
                self.send("Browser.close", session=False)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    report, shot = Path(argv[0]).resolve(), Path(argv[1])
    numbers = [a for a in argv[2:] if a.isdigit()]
    width, height = (int(numbers[0]), int(numbers[1])) if len(numbers) >= 2 else (1280, 1600)
    binary = find_chromium()
    if binary is None:
        print("chromium not found", file=sys.stderr)
        return 1
    with Chromium(binary, width, height) as browser:
        browser.open(report.as_uri(), width, height)
        shot.write_bytes(browser.screenshot())
        if "--all" in argv:  # the whole page in bands: SHOT-1.png, SHOT-2.png, ...
            total = browser.evaluate("document.documentElement.scrollHeight")
            for i, top in enumerate(range(0, int(total), height), start=1):
                band = shot.with_name(f"{shot.stem}-{i}{shot.suffix}")
                band.write_bytes(browser.screenshot(top, min(height, total - top)))
        for problem in browser.problems():
            print(problem)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
