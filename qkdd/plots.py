"""PNG plots for qkdctl (matplotlib, the optional extra `plot`): key rate against distance, and a link's QBER and
secret key rate over time. Each function writes one file and returns its path; matplotlib is imported only
here, headless (Agg), so the rest of qkdctl runs without it."""
from __future__ import annotations

from pathlib import Path

# The seed's QBER band edges (qkdd/link/qber_gate.py), drawn on the QBER plot.
BAND_EDGES = ((0.03, "degraded"), (0.05, "warning"), (0.08, "critical"), (0.11, "compromised"))


class PlotUnavailable(Exception):
    """matplotlib is not installed (pip install 'qkdd[plot]')."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable("plots need matplotlib, the plot extra, which the packages leave out: run qkdctl "
                              "from a virtual environment with pip install 'qkdd[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def rate_vs_distance(path: str | Path, distances_km: list[float], rates: dict[str, list[float]]) -> Path:
    """One curve per series, key bits per pulse on a log scale; zero rates (past the cutoff) are not drawn."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 5), dpi=100)
    for name, values in rates.items():
        points = [(d, r) for d, r in zip(distances_km, values) if r > 0]
        if points:
            axes.plot([d for d, _ in points], [r for _, r in points], marker=".", label=name)
    axes.set_yscale("log")
    axes.set_xlabel("fibre length (km)")
    axes.set_ylabel("secret key rate (bits per pulse or symbol)")
    axes.set_title("Key rate against distance (qkdctl sim rate)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    return _save(plt, figure, path)


def link_history(path: str | Path, series: dict[str, dict[str, list[float]]]) -> Path:
    """Per link: QBER (%) with the band edges, and the secret key rate (bit/s) below it, against time.
    `series[link_id]` holds "time_s" and "qber" per frame, and "rate_time_s" and "rate_bps" per bin."""
    plt = _pyplot()
    figure, (qber_axes, rate_axes) = plt.subplots(2, 1, figsize=(9, 6), dpi=100, sharex=True)
    start_s = min((s["time_s"][0] for s in series.values() if s["time_s"]), default=0.0)
    for link_id, s in series.items():
        qber_axes.plot([t - start_s for t in s["time_s"]], [q * 100 for q in s["qber"]], ".", label=link_id)
        rate_axes.step([t - start_s for t in s["rate_time_s"]], s["rate_bps"], where="post", label=link_id)
    for edge, band in BAND_EDGES:
        qber_axes.axhline(edge * 100, linestyle="--", linewidth=0.8, color="grey")
        qber_axes.annotate(band, (0, edge * 100), fontsize=7, color="grey", xytext=(2, 2),
                           textcoords="offset points")
    qber_axes.set_ylabel("QBER (%)")
    qber_axes.set_title("QBER and secret key rate per link (qkdctl links --plot)")
    qber_axes.legend(loc="upper right")
    rate_axes.set_ylabel("secret key rate (bit/s)")
    rate_axes.set_xlabel("seconds since the first frame shown")
    for axes in (qber_axes, rate_axes):
        axes.grid(True, alpha=0.3)
    return _save(plt, figure, path)


def _save(plt, figure, path: str | Path) -> Path:
    target = Path(path)
    try:
        figure.tight_layout()
        figure.savefig(target, format="png")
    finally:
        plt.close(figure)
    return target
