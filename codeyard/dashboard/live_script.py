"""The run page's only script: follows `/runs/<id>/events` (server-sent events) and recolours
the graph's nodes and the state badges as tasks move. It writes text with `textContent` and
attributes only, never markup, so event contents cannot inject HTML."""

from __future__ import annotations

import json

from codeyard.report.graph_svg import STATE_COLOURS

_TEMPLATE = """"use strict";
(function () {
  const COLOURS = %(colours)s;
  const run = document.getElementById("run");
  const live = document.getElementById("live");
  if (!run || !window.EventSource) { return; }

  function paintBadge(badge, state) {
    badge.textContent = state;
    badge.setAttribute("data-state", state);
    badge.style.background = COLOURS[state] || "#ffffff";
  }
  function setTask(change) {
    document.querySelectorAll("#graph g.node").forEach(function (node) {
      if (node.getAttribute("data-task") !== change.task_id) { return; }
      node.setAttribute("data-state", change.state);
      const rect = node.querySelector("rect");
      if (rect) { rect.setAttribute("fill", COLOURS[change.state] || "#ffffff"); }
      const title = node.querySelector("title");
      if (title) { title.textContent = change.task_id + ": " + change.state; }
    });
    document.querySelectorAll("#tasks .state[data-task]").forEach(function (badge) {
      if (badge.getAttribute("data-task") === change.task_id) { paintBadge(badge, change.state); }
    });
    document.querySelectorAll("#tasks td[data-attempt]").forEach(function (cell) {
      if (cell.getAttribute("data-attempt") === change.task_id) {
        cell.textContent = String(change.attempt);
      }
    });
  }

  const source = new EventSource(run.getAttribute("data-events"));
  source.addEventListener("open", function () { live.textContent = "live"; });
  source.addEventListener("error", function () { live.textContent = "reconnecting…"; });
  source.addEventListener("TaskStatesChanged", function (message) {
    JSON.parse(message.data).changes.forEach(setTask);
  });
  source.addEventListener("RunStateChanged", function (message) {
    const badge = document.querySelector("#run-state .state");
    if (badge) { paintBadge(badge, JSON.parse(message.data).state); }
  });
})();
"""


def live_script() -> str:
    colours = json.dumps({str(state): colour for state, colour in STATE_COLOURS.items()})
    return _TEMPLATE % {"colours": colours}
