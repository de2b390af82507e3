"""The run page's only script: follows `/runs/<id>/events` (server-sent events) and recolours
the graph's nodes and the state badges as tasks move, and says whether it is live (it keeps
retrying, less and less often, when the dashboard refuses the stream). It writes text with
`textContent` and attributes only, never markup, so event contents cannot inject HTML."""

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

  // A stream that drops is retried by the browser itself, but an answer other than 200 (a
  // 503 while no coordinator answers, as during a restart) makes it give up for good: then a
  // new EventSource, after a wait that doubles up to RETRY_MOST_MS. Every stream starts from
  // the run's first event, so the page catches up whichever way it reconnected.
  const RETRY_FIRST_MS = 1000;
  const RETRY_MOST_MS = 30000;
  let retryMs = RETRY_FIRST_MS;

  function retryLater() {
    live.textContent = "offline: retrying in " + Math.round(retryMs / 1000) + " s";
    setTimeout(function () {
      live.textContent = "reconnecting…";
      follow();
    }, retryMs);
    retryMs = Math.min(retryMs * 2, RETRY_MOST_MS);
  }

  function follow() {
    const source = new EventSource(run.getAttribute("data-events"));
    source.addEventListener("open", function () {
      retryMs = RETRY_FIRST_MS;
      live.textContent = "live";
    });
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) {
        retryLater();
      } else {
        live.textContent = "reconnecting…";
      }
    });
    source.addEventListener("TaskStatesChanged", function (message) {
      JSON.parse(message.data).changes.forEach(setTask);
    });
    source.addEventListener("RunStateChanged", function (message) {
      const badge = document.querySelector("#run-state .state");
      if (badge) { paintBadge(badge, JSON.parse(message.data).state); }
    });
  }

  follow();
})();
"""


def live_script() -> str:
    colours = json.dumps({str(state): colour for state, colour in STATE_COLOURS.items()})
    return _TEMPLATE % {"colours": colours}
