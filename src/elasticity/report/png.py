"""Figures are written one way: a PNG, atomically (a crash never leaves half an image), the figure closed."""

from __future__ import annotations

import io
from pathlib import Path

from elasticity.runs import atomic_write


def save_png(fig, path: Path, dpi: int = 110) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return path
