"""The pages of the SMART app other than the summary: why the summary is not shown and what to
do. Plain, self-contained HTML; every value is escaped. They never name the patient."""

from __future__ import annotations

from html import escape

from fastapi.responses import HTMLResponse

# The summary and these pages load nothing: no scripts, no network, inline style only.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "base-uri 'none'; form-action 'none'",
}

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} — twitching / cramps summary</title>
<style>body{{font:15px/1.45 system-ui,sans-serif;color:#1b1b1b;max-width:40rem;margin:2rem auto;
padding:0 1rem}} h1{{font-size:1.3rem}} .box{{border:3px solid #7a4a00;border-radius:.4rem;
padding:.6rem 1rem;background:#fff7e6}}</style></head>
<body><h1>{title}</h1><div class="box" role="alert"><p>{message}</p></div>
<p>{advice}</p></body></html>
"""

NOT_ALLOWED = ("FHIR server not allowed",
               "This EHR's FHIR server is not one this service is configured to read from, so "
               "the summary cannot be opened from it.")
EXPIRED = ("Session expired",
           "This summary's session has expired or was never started in this browser (the "
           "session cookie is missing).")
STATE_MISMATCH = ("Launch not recognised",
                  "The answer from the EHR's authorization server does not belong to the launch "
                  "started in this browser, so it was not used.")
ACCESS_DENIED = ("Access not granted",
                 "Access to the patient's record was refused at the EHR, so the summary cannot "
                 "be shown.")
MISMATCH = ("Patient does not match",
            "The EHR gave access to a different patient than the one the card was about. The "
            "summary is not shown, so that no one reads another patient's findings by mistake.")
REOPEN = ("Open the summary again from the card in the patient's chart: each opening starts a "
          "new, short-lived session.")


def message_page(status: int, title: str, message: str, advice: str = REOPEN) -> HTMLResponse:
    body = _PAGE.format(title=escape(title), message=escape(message), advice=escape(advice))
    return HTMLResponse(body, status, headers=SECURITY_HEADERS)


def summary_page(html: str) -> HTMLResponse:
    return HTMLResponse(html, 200, headers=SECURITY_HEADERS)
