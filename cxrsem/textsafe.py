"""User strings (file, concept, model names) shown literally by matplotlib.

Matplotlib reads ``$...$`` in any title, label or tick as mathtext, and an unbalanced or invalid
one raises while the figure is drawn, so a concept called ``$^$`` or an image ``x$y$.png`` would
stop a run.  Every figure module passes such names through :func:`mpl_literal`.  (The CLI's rich
output has its own escaping, ``rich.markup.escape``, in ``cxrsem/cli``.)
"""

from __future__ import annotations


def mpl_literal(text: object) -> str:
    """``text`` with mathtext's ``$`` (and the backslash that could escape it) made literal."""
    return str(text).replace("\\", "\\\\").replace("$", r"\$")


def mpl_text(text: object, limit: int = 48) -> str:
    """One line of at most ``limit`` characters, shown literally (very long names would squeeze
    the axes)."""
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[:limit - 1] + "…"
    return mpl_literal(text)
