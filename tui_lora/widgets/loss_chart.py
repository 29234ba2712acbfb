"""The loss over steps, raw and smoothed (as TensorBoard smooths it), with the learning rate."""

from __future__ import annotations

from textual_plotext import PlotextPlot

from tui_lora.i18n import t
from tui_lora.run_view import RunView

# Plotted points at most: a long run's curve is thinned to about one point a column.
MAX_POINTS = 400


def thin(points: list[tuple[int, float]], limit: int = MAX_POINTS) -> list[tuple[int, float]]:
    """Every n-th point (and always the last), so plotting stays cheap on a long run."""
    if len(points) <= limit:
        return points
    stride = -(-len(points) // limit)
    kept = points[::stride]
    return kept if kept[-1] == points[-1] else [*kept, points[-1]]


class LossChart(PlotextPlot):
    def show(self, view: RunView) -> None:
        plot = self.plt
        plot.clear_data()
        plot.clear_figure()
        title = t("dashboard.loss")
        if view.lr is not None:
            title += f"  ·  lr {view.lr:.2e}"
        plot.title(title)
        if view.losses:
            steps = [step for step, _ in view.losses]
            raw = thin(view.losses)
            smoothed = thin(list(zip(steps, view.smoothed_losses(), strict=True)))
            plot.plot([s for s, _ in raw], [v for _, v in raw], marker="braille", color="gray", label=t("dashboard.raw"))
            plot.plot([s for s, _ in smoothed], [v for _, v in smoothed], marker="braille", color="orange", label=t("dashboard.smoothed"))
        self.refresh()
