"""Figures for the report: one place that sets matplotlib up and saves a figure.

Every plot of the report must be readable on its own: a title that says what is shown,
labelled axes with units, and a layout in which the title never overlaps the axes (tall
figures included: ``figure`` uses matplotlib's constrained layout, which reserves room
for the suptitle).
"""

import os

from suite.io import atomic_write

__all__ = ["figure", "save"]

DPI = 110


def figure(nrows: int = 1, ncols: int = 1, *, width: float = 10.0, height: float = 3.6,
           title: str | None = None, **kwargs):
    """A (fig, axes) pair with constrained layout on the headless Agg backend."""
    import matplotlib  # matplotlib loads lazily: the run phase and the tests never need it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained",
                             **kwargs)
    if title:
        fig.suptitle(title)
    return fig, axes


def save(fig, path: str | os.PathLike) -> str:
    """Save ``fig`` as PNG at ``path`` (atomically), close it, and return the file name."""
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
    finally:
        plt.close(fig)
    return os.path.basename(os.fspath(path))
