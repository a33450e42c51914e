"""What the figures share: matplotlib, imported only when a figure is drawn, one palette, and saving a PNG.

matplotlib is an optional dependency (``pip install "monai-dsd[figures]"``); figures are drawn on its Agg canvas
without pyplot, so no global backend is changed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["PALETTE", "matplotlib_figure", "save_png"]

#: One fixed qualitative colour per class or curve (matplotlib's tab10 without its grey).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
_DPI = 150
_INSTALL_HINT = 'The figures need matplotlib, an optional dependency: pip install "monai-dsd[figures]"'


def matplotlib_figure() -> tuple[Any, Any]:
    """Import matplotlib lazily; return ``(Figure, FigureCanvasAgg)``.

    Raises:
        ImportError: matplotlib is not installed; the message says how to install it.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error
    return Figure, FigureCanvasAgg


def save_png(fig: Any, canvas_cls: Any, out_png: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG; parent folders are created, an existing file is replaced."""
    out = Path(out_png).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas_cls(fig)  # attaches the Agg canvas to the figure
    fig.savefig(out, format="png", dpi=_DPI)
    return out
