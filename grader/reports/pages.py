"""The package's page templates (`grader/reports/templates/`): one Jinja2 environment for every HTML page.

Guarantees: every value put into a page is escaped (`autoescape`), and a name a template uses that the page
does not give is an error, not an empty string (`StrictUndefined`). Built once per process.
"""

from __future__ import annotations

import functools

import jinja2


@functools.lru_cache(maxsize=1)
def templates() -> jinja2.Environment:
    """The environment the feedback page and the class page are rendered in."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("grader.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
