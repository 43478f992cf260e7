"""The HTML report in a real headless Chromium: no console errors, every figure decodes and is not
blank, a screenshot is not blank, untrusted names are text, and the tables sort.

Chromium comes from Debian's ``chromium`` package (``make test`` and ``.ci/run`` install it when
missing); without it these tests are skipped.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cxrsem.reporting import build_report
from tests.report_fixtures import (
    Chromium,
    attribution_doc,
    dissection_doc,
    find_chromium,
    write_attribution,
    write_dissection,
)

XSS = "<script>alert(1)</script>"
CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium; "
                                                         "make test installs it)")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    docs = {}
    for epoch, units in enumerate([[("Left Lung", 0.05), (XSS, 0.01), ("Nodule", 0.0)],
                                   [("Left Lung", 0.05), (XSS, 0.08), ("Nodule", 0.02)],
                                   [("Consolidation", 0.09), (XSS, 0.08), ("Nodule", 0.06)]]):
        docs[epoch] = dissection_doc(units, model_path=f"/runs/a/epoch-{epoch:03d}.pt", epoch=epoch)
        write_dissection(root / "dis", f"epoch-{epoch:03d}", docs[epoch])
    for i, top in enumerate([[1, 0], [0, 2]]):
        image = f"/data/<img onerror=alert(2)>{i}.png"
        write_attribution(root / "attr", attribution_doc(docs[2], image, top))
    out = root / "report.html"
    result = build_report([root / "dis"], attributions=[root / "attr"], out=out)
    assert not result.warnings
    with Chromium(CHROMIUM, width=1280, height=2000) as browser:
        browser.open(out.as_uri(), width=1280, height=2000)
        yield browser, out, root


def test_no_console_errors_and_figures_render(page):
    browser, out, root = page
    images = browser.evaluate(
        "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
    # Fig. 2, Fig. 4, thresholds, 6 unit figures, 2 attributions: all decoded by the browser.
    assert len(images) == 11
    assert all(complete and w > 20 and h > 20 for complete, w, h in images)
    shot = browser.screenshot()
    (root / "screenshot.png").write_bytes(shot)
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=float)
    assert pixels.shape == (2000, 1280)
    assert pixels.std() > 10  # text and figures, not a blank page
    assert (pixels < 128).mean() > 0.005
    assert browser.problems() == []


def test_untrusted_names_are_text(page):
    browser, _, _ = page
    assert browser.evaluate("document.scripts.length") == 1
    assert browser.evaluate(f"document.body.innerText.includes({XSS!r})")
    assert browser.evaluate("document.body.innerText.includes('<img onerror=alert(2)>0.png')")
    assert browser.evaluate("document.querySelectorAll('img[onerror]').length") == 0
    assert not any(e["method"] == "Page.javascriptDialogOpening" for e in browser.events)


def test_tables_sort_numerically(page):
    browser, _, _ = page
    column = ("(() => { const t = document.querySelector('#detectors table');"
              " const i = Array.from(t.tHead.rows[0].cells).findIndex(c => c.textContent === 'detectors');"
              " return [i, Array.from(t.tBodies[0].rows).map(r => Number(r.cells[i].textContent))]; })()")
    index, before = browser.evaluate(column)
    assert before == [1, 2, 3]
    browser.evaluate(f"document.querySelector('#detectors table').tHead.rows[0].cells[{index}].click()")
    assert browser.evaluate(column)[1] == [1, 2, 3]
    browser.evaluate(f"document.querySelector('#detectors table').tHead.rows[0].cells[{index}].click()")
    assert browser.evaluate(column)[1] == [3, 2, 1]
    assert browser.problems() == []
