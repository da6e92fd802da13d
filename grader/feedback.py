"""Stage 6: the feedback page a student opens in a browser: one self-contained HTML file.

For every wrong gradient of the notebook's own run: a heatmap of |answer - reference| beside the
reference, as the lecture looks at `d_logits` with `imshow`; and per exercise the forward graph, each
tensor coloured by the verdict on its gradient, so that the first red one stands out. Pictures are
PNGs inlined as data URIs: the page needs no server and no other file. Pure: a `Report` and the
graded runs in, a string out.
"""

from __future__ import annotations

import base64
import html
import io

import torch

from grader.compare import PASSING
from grader.score import GradedRun, Report

GREEN, ORANGE, RED, GREY = "#2e7d32", "#ef6c00", "#c62828", "#9e9e9e"


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _as_2d(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().double()
    if t.dim() == 0:
        return t.reshape(1, 1)
    if t.dim() == 1:
        return t.reshape(1, -1)
    return t.reshape(t.shape[0], -1)


def heatmap(name: str, answer: torch.Tensor, reference: torch.Tensor) -> str:
    """|answer - reference| beside the reference, as one PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    diff, ref = _as_2d((answer.double() - reference.double()).abs()), _as_2d(reference)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, data, title, cmap in ((left, diff, f"|{name} - reference|", "Reds"), (right, ref, "reference", "RdBu_r")):
        image = ax.imshow(data.numpy(), cmap=cmap, aspect="auto", interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"shape {tuple(reference.shape)}", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _png(fig)


def _colour(status: str, local_status: str) -> str:
    if status in PASSING:
        return GREEN
    if local_status in PASSING:
        return ORANGE  # its own step is right: off only because of an earlier mistake
    return RED if status not in ("missing", "error") else GREY


def graph(report: Report, exercise: str, edges: dict[str, tuple[str, ...]]) -> str:
    """The exercise's forward graph, from the loss down, each tensor coloured by its gradient's verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variables = [v for v in report.variables if v.exercise == exercise]
    order = {v.of: i for i, v in enumerate(variables)}
    fig, ax = plt.subplots(figsize=(5.5, 0.34 * len(variables) + 0.8))
    for v in variables:
        y = -order[v.of]
        for source in edges.get(v.of, ()):  # v.of is computed from source: an arrow source -> v.of
            if source in order:
                ys = -order[source]
                bend = 0.25 + 0.12 * abs(y - ys)
                ax.annotate("", xy=(0, y), xytext=(0, ys), arrowprops=dict(
                    arrowstyle="->", color="#90a4ae", lw=0.8, connectionstyle=f"arc3,rad={bend if y < ys else -bend}"))
        ax.scatter([0], [y], s=140, color=_colour(v.status, v.local_status), zorder=3)
        ax.text(0.08, y, f"{v.of}  ({v.name}: {v.status})", va="center", fontsize=8)
    ax.set_xlim(-1.2, 2.2)
    ax.set_ylim(-len(variables) + 0.4, 0.8)
    ax.axis("off")
    ax.set_title(f"Exercise {exercise}: the forward pass, gradients from the loss down", fontsize=9)
    return _png(fig)


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; color: #212121; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; }
td, th { border-bottom: 1px solid #e0e0e0; padding: 4px 8px; text-align: left; vertical-align: top; }
.ok { color: #2e7d32; } .bad { color: #c62828; } .follows { color: #ef6c00; }
figure { margin: 1em 0; } figcaption { font-size: 0.85em; color: #616161; }
.legend span { display: inline-block; margin-right: 1.5em; }
"""

_CHECK = """
window.addEventListener("load", () => {
  const ok = [...document.images].every(i => i.complete && i.naturalWidth > 0);
  document.body.dataset.images = ok ? "loaded" : "broken";
});
"""


def page(report: Report, runs: list[GradedRun], edges: dict[str, tuple[str, ...]] | None = None) -> str:
    """The feedback page of `report`; `runs[0]` holds the answers and references of the notebook's own run."""
    e = html.escape
    main = runs[0] if runs else None
    out = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(report.assignment)}: "
           f"{report.score:g}/{report.max_score:g}</title><style>{_STYLE}</style><script>{_CHECK}</script></head><body>",
           f"<h1>{e(report.assignment)}: {report.score:g} / {report.max_score:g}</h1>"]
    if report.status == "failed":
        out.append(f"<p class='bad'><strong>Your notebook did not run to the end:</strong> {e(report.error)}</p>")
    out.append("<p class='legend'><span class='ok'>&#9679; right</span><span class='follows'>&#9679; its own step is "
               "right, the value is off because of an earlier mistake</span><span class='bad'>&#9679; wrong</span></p>")
    for ex in report.exercises:
        variables = [v for v in report.variables if v.exercise == ex.id]
        out.append(f"<h2>Exercise {e(ex.id)}: {ex.score:g} / {ex.max_score:g}</h2>")
        if ex.root_cause:
            out.append(f"<p>The first wrong step is <strong>{e(ex.root_cause)}</strong>: fix it first; the values "
                       "in orange below are off only because of it.</p>")
        out.append("<table><tr><th>gradient</th><th>verdict</th><th>points</th><th>what to look at</th></tr>")
        for v in variables:
            css = "ok" if v.status in PASSING else ("follows" if v.local_status in PASSING else "bad")
            out.append(f"<tr class='{css}'><td><code>{e(v.name)}</code></td><td>{e(v.status)}</td>"
                       f"<td>{v.points:g}/{v.max_points:g}</td><td>{e(v.message)}</td></tr>")
        out.append("</table>")
        if edges is not None and len(variables) > 2 and any(v.status not in PASSING for v in variables):
            out.append(f"<figure><img alt='the forward graph of exercise {e(ex.id)}' "
                       f"src='{graph(report, ex.id, edges)}'></figure>")
        if main is None or not main.captured.finished:
            continue
        for v in variables:
            if v.status in PASSING or v.local_status in PASSING:
                continue
            answer, reference = main.captured.values.get((ex.id, v.name)), main.reference.get(v.of)
            if type(answer) is torch.Tensor and isinstance(reference, torch.Tensor) \
                    and answer.shape == reference.shape and answer.numel() > 0:
                out.append(f"<figure><img alt='where {e(v.name)} differs from the reference' "
                           f"src='{heatmap(v.name, answer, reference)}'><figcaption>{e(v.message)}</figcaption></figure>")
    if report.notes:
        out.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in report.notes) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out)
