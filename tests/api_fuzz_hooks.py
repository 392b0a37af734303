"""Schemathesis hooks for tests/test_api_fuzz.py (loaded through SCHEMATHESIS_HOOKS).

Add Firmware checks the metadata before it reads the file, so the file must be the form's last
part (the schema says so; OpenAPI has no keyword for part order). Schemathesis sends the parts in
the generated dict's order: put the file last, as the console and curl -F do.
"""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if isinstance(body, dict) and "file" in body:
        return {**{k: v for k, v in body.items() if k != "file"}, "file": body["file"]}
    return body
