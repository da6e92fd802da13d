"""Stage 7: the feedback page a student opens in a browser: one self-contained HTML file.

For every wrong gradient of the notebook's own run: a heatmap of |answer - reference| beside the
reference, as the lecture looks at `d_logits` with `imshow`; and per exercise the forward graph, each
tensor coloured by the verdict on its gradient, so that the first red one stands out. Pictures are
PNGs inlined as data URIs: the page needs no server and no other file. Pure: a `Report` and the
graded runs in, a string out.
"""

from __future__ import annotations

import base64
import functools
import io

import jinja2
import torch
from PIL import Image

from grader.runs import answer_key
from grader.verdicts import PASSING, GradedRun, Report

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


def _png_rgb(rgb: torch.Tensor) -> bytes:
    """A PNG file of an (height, width, 3) uint8 image, written by Pillow (matplotlib's own image library)."""
    buffer = io.BytesIO()
    Image.fromarray(rgb.contiguous().numpy(), "RGB").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _shade(values: torch.Tensor, signed: bool) -> torch.Tensor:
    """Colours for a 2-D tensor: white to red for magnitudes; blue, white, red for signed values."""
    scale = float(values.abs().max()) or 1.0
    x = (values / scale).clamp(-1, 1)
    white = torch.ones(*x.shape, 3, dtype=torch.float64)
    red = torch.tensor([0.78, 0.16, 0.16], dtype=torch.float64)
    blue = torch.tensor([0.13, 0.40, 0.67], dtype=torch.float64)
    t = x.abs().unsqueeze(-1)
    colour = torch.where((x >= 0).unsqueeze(-1) | (not signed), red, blue)
    return ((white * (1 - t) + colour * t) * 255).round().to(torch.uint8)


SLICES = 4
"""Most slices drawn of a gradient of three or more dimensions (one per leading index)."""


def _slices(t: torch.Tensor) -> list[torch.Tensor]:
    """A tensor as 2-D pictures: itself (a row for a vector), or for three or more dimensions its last two
    dimensions for each of the first `SLICES` leading indices (a (B, T, C) gradient: B pictures of T x C)."""
    t = t.detach().double()
    if t.dim() <= 2:
        return [_as_2d(t)]
    return list(t.reshape(-1, t.shape[-2], t.shape[-1])[:SLICES])


def heatmap(name: str, answer: torch.Tensor, reference: torch.Tensor) -> str:
    """|answer - reference| (white to red) beside the reference (blue, white, red), as one PNG data URI; a
    gradient of three or more dimensions as a column of such pairs, one per leading index (up to `SLICES`).

    Drawn here rather than with matplotlib: a batch draws one per wrong gradient of every student, and
    this takes a millisecond where a figure takes a tenth of a second."""
    diffs, refs = _slices((answer.double() - reference.double()).abs()), _slices(reference)
    scale_diff = max(float(d.abs().max()) for d in diffs) or 1.0  # (one scale for every slice: comparable)
    scale_ref = max(float(r.abs().max()) for r in refs) or 1.0
    cell = max(2, min(12, 360 // max(diffs[0].shape)))  # pixels per entry: small tensors drawn large
    rows = []
    for d, r in zip(diffs, refs):
        panels = [
            _shade(x / scale, signed).repeat_interleave(cell, 0).repeat_interleave(cell, 1)
            for x, signed, scale in ((d, False, scale_diff), (r, True, scale_ref))
        ]
        gap = torch.full((panels[0].shape[0], 3 * cell, 3), 255, dtype=torch.uint8)
        rows.append(torch.cat([panels[0], gap, panels[1]], dim=1))
    between = torch.full((3 * cell, rows[0].shape[1], 3), 255, dtype=torch.uint8)
    image = torch.cat([part for row in rows for part in (row, between)][:-1], dim=0)
    return "data:image/png;base64," + base64.b64encode(_png_rgb(image)).decode("ascii")


def _colour(status: str, local_status: str) -> str:
    if status in PASSING:
        return GREEN
    if local_status in PASSING:
        return ORANGE  # its own step is right: off only because of an earlier mistake
    return RED if status not in ("missing", "error") else GREY


def graph(report: Report, exercise: str, edges: dict[str, tuple[str, ...]]) -> str:
    """The exercise's forward graph, from the loss down, each tensor coloured by its gradient's verdict."""
    nodes = tuple(
        (v.of, v.name, v.status, _colour(v.status, v.local_status)) for v in report.variables if v.exercise == exercise
    )
    return _graph_png(exercise, nodes, tuple((of, edges.get(of, ())) for of, *_ in nodes))


@functools.lru_cache(maxsize=256)  # students with the same verdicts share one picture
def _graph_png(
    exercise: str, nodes: tuple[tuple[str, str, str, str], ...], edges: tuple[tuple[str, tuple[str, ...]], ...]
) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = {of: i for i, (of, *_) in enumerate(nodes)}
    sources = dict(edges)
    fig, ax = plt.subplots(figsize=(5.5, 0.34 * len(nodes) + 0.8))
    for of, name, status, colour in nodes:
        y = -order[of]
        for source in sources.get(of, ()):  # `of` is computed from source: an arrow source -> of
            if source in order:
                ys = -order[source]
                bend = 0.25 + 0.12 * abs(y - ys)
                ax.annotate(
                    "",
                    xy=(0, y),
                    xytext=(0, ys),
                    arrowprops=dict(
                        arrowstyle="->",
                        color="#90a4ae",
                        lw=0.8,
                        connectionstyle=f"arc3,rad={bend if y < ys else -bend}",
                    ),
                )
        ax.scatter([0], [y], s=140, color=colour, zorder=3)
        ax.text(0.08, y, f"{of}  ({name}: {status})", va="center", fontsize=8)
    ax.set_xlim(-1.2, 2.2)
    ax.set_ylim(-len(nodes) + 0.4, 0.8)
    ax.axis("off")
    ax.set_title(f"Exercise {exercise}: the forward pass, gradients from the loss down", fontsize=9)
    return _png(fig)


@functools.lru_cache(maxsize=1)
def _templates() -> jinja2.Environment:
    """The package's page templates (`grader/reports/templates/`), escaping every value put into them."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("grader.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def page(report: Report, runs: list[GradedRun], edges: dict[str, tuple[str, ...]] | None = None) -> str:
    """The feedback page of `report`; `runs[0]` holds the answers and references of the notebook's own run."""
    main = runs[0] if runs else None
    sections = []
    for ex in report.exercises:
        variables = [v for v in report.variables if v.exercise == ex.id]
        rows = [
            (v, "ok" if v.status in PASSING else ("follows" if v.local_status in PASSING else "bad")) for v in variables
        ]
        picture = None
        if (
            edges is not None
            and len(variables) > 2
            and any(v.status not in PASSING for v in variables)
            and any(v.of in edges for v in variables)
        ):
            picture = graph(report, ex.id, edges)
        heatmaps = []
        for v in variables if main is not None and main.captured.finished else ():
            if v.status in PASSING or v.local_status in PASSING:
                continue
            answer = main.captured.values.get((ex.id, v.name))
            reference = main.reference.get(answer_key(main.reference, ex.id, v.of))
            if (
                type(answer) is torch.Tensor
                and isinstance(reference, torch.Tensor)
                and answer.shape == reference.shape
                and answer.numel() > 0
            ):
                heatmaps.append((v, heatmap(v.name, answer, reference), tuple(reference.shape)))
        sections.append({"exercise": ex, "rows": rows, "graph": picture, "heatmaps": heatmaps})
    return _templates().get_template("feedback.html").render(report=report, sections=sections)
