"""Stage 7: the feedback page a student opens in a browser: one self-contained HTML file.

For every wrong gradient of the notebook's own run: a heatmap of |answer - reference| beside the
reference, as the lecture looks at `d_logits` with `imshow`; and per exercise the forward graph, each
tensor coloured by the verdict on its gradient, so that the first red one stands out. Pictures are
inlined as data URIs (the heatmaps PNGs, the graph an SVG): the page needs no server and no other file.
Pure: a `Report` and the graded runs in, a string out.
"""

from __future__ import annotations

import base64
import functools
import html
import io

import torch
from PIL import Image

from grader.reports.pages import templates
from grader.runs import answer_key
from grader.verdicts import PASSING, GradedRun, Report

GREEN, ORANGE, RED, GREY = "#2e7d32", "#ef6c00", "#c62828", "#9e9e9e"


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
    return _graph_svg(exercise, nodes, tuple((of, edges.get(of, ())) for of, *_ in nodes))


_ROW, _TOP, _WIDTH = 22, 34, 520
"""The graph's geometry in pixels: a row per tensor, the title's band, the picture's width."""


@functools.lru_cache(maxsize=256)  # students with the same verdicts share one picture
def _graph_svg(
    exercise: str, nodes: tuple[tuple[str, str, str, str], ...], edges: tuple[tuple[str, tuple[str, ...]], ...]
) -> str:
    """The graph as an SVG data URI: a dot per tensor from the loss down, labelled with its gradient's verdict, and
    an arc from each tensor to those computed from it.

    Written here as text rather than drawn by matplotlib: a class has a picture per distinct set of verdicts,
    and a figure took a fifth of a second of the grader's own process each (a minute for a large class)."""
    order = {of: i for i, (of, *_) in enumerate(nodes)}
    sources = dict(edges)
    height = _TOP + _ROW * len(nodes) + 8
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" font-family="sans-serif">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="8" y="20" font-size="13">Exercise {html.escape(exercise)}: the forward pass, gradients from the '
        "loss down</text>",
    ]
    x = 70  # the dots' column; arcs bend to its left

    def y(i: int) -> int:
        return _TOP + _ROW * i + _ROW // 2

    for of, *_ in nodes:
        for source in sources.get(of, ()):  # `of` is computed from source: an arc source -> of
            if source in order:
                y0, y1 = y(order[source]), y(order[of])
                bend = x - 12 - 9 * min(abs(y1 - y0) // _ROW, 6)
                parts.append(
                    f'<path d="M {x} {y0} C {bend} {y0}, {bend} {y1}, {x - 6} {y1}" fill="none" stroke="#90a4ae" '
                    'stroke-width="1" marker-end="url(#arrow)"/>'
                )
    parts.insert(
        1,
        '<defs><marker id="arrow" viewBox="0 0 6 6" refX="5" refY="3" markerWidth="6" markerHeight="6" '
        'orient="auto"><path d="M0,0 L6,3 L0,6 z" fill="#90a4ae"/></marker></defs>',
    )
    for i, (of, name, status, colour) in enumerate(nodes):
        label = html.escape(f"{of}  ({name}: {status})")
        parts.append(f'<circle cx="{x}" cy="{y(i)}" r="7" fill="{colour}"/>')
        parts.append(f'<text x="{x + 16}" y="{y(i) + 4}" font-size="12">{label}</text>')
    parts.append("</svg>")
    svg = "".join(parts).encode("utf-8")
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")


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
        if main is not None and main.captured.finished:
            for v in variables:
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
    return templates().get_template("feedback.html").render(report=report, sections=sections)
