"""The web dashboard: runs, a run's live task graph, task details and pending approvals.

`pages` renders HTML from the wire model (pure), `auth` checks the token and CSRF, `server`
is the aiohttp application over a bus connected as the `ctl` principal, and `service` runs it
as `codeyard dashboard`."""
