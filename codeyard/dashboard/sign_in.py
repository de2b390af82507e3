"""Signing in with the token kept out of every URL a server sees.

`codeyard up` prints `/signin#token=...`: a URL's fragment never leaves the browser, so no
reverse proxy's access log, and no history sync of a query string, holds the token. The sign-in
page's script moves it from the fragment into the page's form, drops the fragment from the
address bar and posts the form, which trades the token for the session cookie. Without
JavaScript, the token is pasted into the same form. (`/?token=...` still works, for links
printed by older versions; the query string is what the fragment keeps out of logs.)
"""

from __future__ import annotations

from codeyard.dashboard.pages import page
from codeyard.terminal_text import html_text

SIGN_IN = "/signin"
SIGN_IN_SCRIPT = "/static/signin.js"
TOKEN_FIELD = "token"

SCRIPT = """"use strict";
(function () {
  const form = document.getElementById("signin");
  const found = /(?:^#|&)token=([^&]*)/.exec(window.location.hash);
  if (!form || !found) { return; }
  history.replaceState(null, "", window.location.pathname);
  try {
    form.elements.token.value = decodeURIComponent(found[1]);
  } catch (malformed) {
    return;  // a fragment cut short: the person pastes the token instead
  }
  form.submit();
})();
"""


def sign_in_page(problem: str = "") -> str:
    said = f'<p class="problem">{html_text(problem)}</p>\n' if problem else ""
    body = (
        "<h1>Sign in</h1>\n"
        f"{said}"
        f'<form id="signin" method="post" action="{SIGN_IN}">\n'
        f'<label>Dashboard token <input type="password" name="{TOKEN_FIELD}" '
        'autocomplete="off" required></label>\n'
        '<button type="submit">Sign in</button>\n</form>\n'
        "<p>The link that <code>codeyard up</code> (or <code>codeyard dashboard</code>) printed "
        "signs you in by itself.</p>"
    )
    return page("codeyard: sign in", body, script=SIGN_IN_SCRIPT)
