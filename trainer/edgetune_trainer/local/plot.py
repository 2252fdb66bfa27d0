"""The loss and eval curves of a job as a PNG: training loss against the optimizer step (checkpoints
marked), and eval accuracy and macro-F1 after each epoch.

matplotlib's object API with the Agg canvas: no pyplot, so no global figure state and no GUI backend
is ever chosen, whatever the machine has.
"""

from __future__ import annotations

import io

from edgetune_trainer.local.history import RunHistory


def render_curves(history: RunHistory, title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, eval_axes = figure.subplots(2, 1, sharex=True)
    figure.suptitle(title)

    progress = [e for e in history.events("progress") if e.loss is not None]
    loss_axes.plot([e.step for e in progress], [e.loss for e in progress], marker=".", label="training loss")
    for index, checkpoint in enumerate(history.events("checkpoint")):
        loss_axes.axvline(
            checkpoint.step, color="grey", linestyle=":", linewidth=0.8, label="checkpoint" if index == 0 else None
        )
    loss_axes.set_ylabel("loss")
    loss_axes.grid(alpha=0.3)
    loss_axes.legend(loc="upper right")

    evals = history.events("eval")
    steps = [e.step for e in evals]
    eval_axes.plot(steps, [e.eval_accuracy for e in evals], marker="o", label="eval accuracy")
    eval_axes.plot(steps, [e.eval_macro_f1 for e in evals], marker="s", linestyle="--", label="eval macro-F1")
    eval_axes.set_ylim(0.0, 1.05)
    eval_axes.set_xlabel("optimizer step")
    eval_axes.set_ylabel("eval metric")
    eval_axes.grid(alpha=0.3)
    eval_axes.legend(loc="lower right")

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
