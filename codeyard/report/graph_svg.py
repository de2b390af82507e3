"""The plan as an inline SVG, without JavaScript: one row per dependency depth, one box per
task coloured by its final state, an arrow from each dependency to the task that needs it.
A plan of more than `MAX_DRAWN_TASKS` is not drawn: a 10,000-task plan made 7 MB of SVG that
no browser shows legibly, on every load of its dashboard page."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from codeyard.report.model import RunReport, TaskReport
from codeyard.schemas.model import TaskState
from codeyard.terminal_text import html_text

BOX_WIDTH = 190
BOX_HEIGHT = 46
H_GAP = 28
V_GAP = 48
MARGIN = 16
LABEL_CHARS = 26  # what fits in a box at the font size below
MAX_DRAWN_TASKS = 500  # the most tasks the planner's answers hold

STATE_COLOURS: dict[TaskState, str] = {
    TaskState.PLANNED: "#eeeeee",
    TaskState.READY: "#e3f2fd",
    TaskState.CODING: "#bbdefb",
    TaskState.TESTING: "#bbdefb",
    TaskState.REVIEWING: "#bbdefb",
    TaskState.GATED: "#bbdefb",
    TaskState.AWAITING_APPROVAL: "#fff3c4",
    TaskState.MERGED: "#c8e6c9",
    TaskState.FAILED: "#ffcdd2",
    TaskState.CANCELLED: "#d6d6d6",
}


@dataclass(frozen=True)
class Box:
    task: TaskReport
    x: float
    y: float

    @property
    def centre(self) -> float:
        return self.x + BOX_WIDTH / 2


def layout(report: RunReport) -> dict[str, Box]:
    """Boxes by task id. Within a row, tasks sit below the average place of their dependencies
    (fewer crossing arrows), ties in plan order; each row is centred."""
    layers = report.layers
    widest = max((len(layer) for layer in layers), default=0)
    total = widest * BOX_WIDTH + max(widest - 1, 0) * H_GAP
    slots: dict[str, float] = {}
    boxes: dict[str, Box] = {}
    for depth, layer in enumerate(layers):
        ordered = _order(layer, slots)
        width = len(ordered) * BOX_WIDTH + (len(ordered) - 1) * H_GAP
        left = MARGIN + (total - width) / 2
        for index, task in enumerate(ordered):
            x = left + index * (BOX_WIDTH + H_GAP)
            boxes[task.task_id] = Box(task, x, MARGIN + depth * (BOX_HEIGHT + V_GAP))
            slots[task.task_id] = x
    return boxes


def _order(layer: Sequence[TaskReport], slots: dict[str, float]) -> list[TaskReport]:
    def place(indexed: tuple[int, TaskReport]) -> tuple[float, int]:
        index, task = indexed
        placed = [slots[dep] for dep in task.deps if dep in slots]
        return (sum(placed) / len(placed) if placed else 0.0, index)

    return [task for _, task in sorted(enumerate(layer), key=place)]


def render_graph_svg(report: RunReport) -> str:
    if len(report.tasks) > MAX_DRAWN_TASKS:
        return (
            f'<p class="no-graph">{len(report.tasks):,} tasks: too many to draw '
            f"(at most {MAX_DRAWN_TASKS:,}); every task is listed below.</p>"
        )
    boxes = layout(report)
    widest = max((len(layer) for layer in report.layers), default=0)
    width = 2 * MARGIN + widest * BOX_WIDTH + max(widest - 1, 0) * H_GAP
    rows = len(report.layers)
    height = 2 * MARGIN + rows * BOX_HEIGHT + max(rows - 1, 0) * V_GAP
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plan" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        'font-family="system-ui, sans-serif" font-size="12" '
        'aria-label="task graph: arrows go from a dependency to the task that needs it">',
        "<defs>"
        '<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse">'
        '<path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
    ]
    for dep, task_id in report.edges:
        parts.append(_edge(boxes[dep], boxes[task_id]))
    for box in boxes.values():
        parts.append(_node(box))
    parts.append("</svg>")
    return "\n".join(parts)


def _edge(source: Box, target: Box) -> str:
    x1, y1 = source.centre, source.y + BOX_HEIGHT
    x2, y2 = target.centre, target.y - 2
    bend = (y2 - y1) / 2
    return (
        f'<path class="edge" d="M {x1:.1f} {y1:.1f} C {x1:.1f} {y1 + bend:.1f} '
        f'{x2:.1f} {y2 - bend:.1f} {x2:.1f} {y2:.1f}" fill="none" stroke="#555" '
        'stroke-width="1.3" marker-end="url(#arrow)"/>'
    )


def _node(box: Box) -> str:
    task = box.task
    colour = STATE_COLOURS.get(task.state, "#ffffff")
    tooltip = f"{task.task_id}: {task.title} ({task.state}, attempt {task.attempts})"
    return (
        f'<g class="node" data-task="{html_text(task.task_id)}" data-state="{task.state}">'
        f"<title>{html_text(tooltip)}</title>"
        f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{BOX_WIDTH}" height="{BOX_HEIGHT}" '
        f'rx="6" fill="{colour}" stroke="#444"/>'
        f'<text x="{box.centre:.1f}" y="{box.y + 19:.1f}" text-anchor="middle" '
        f'font-weight="bold">{html_text(_clip(task.task_id))}</text>'
        f'<text x="{box.centre:.1f}" y="{box.y + 36:.1f}" text-anchor="middle">'
        f"{html_text(_clip(task.title))}</text></g>"
    )


def _clip(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= LABEL_CHARS else line[: LABEL_CHARS - 1] + "…"
