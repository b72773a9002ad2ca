"""The one shared plotting helper of the tools: figures on matplotlib's Agg canvas."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(
    width: float, height: float, nrows: int = 1, ncols: int = 1, **subplots: Any
) -> tuple[Figure, np.ndarray]:
    """A figure on matplotlib's Agg canvas (no display needed) and its [nrows, ncols] axes."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplots)
    return fig, axes
