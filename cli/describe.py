"""`servicefactory describe NAME`: a running service's actions, their docs and schemas (from its
GET /openapi.json), for a terminal."""
from __future__ import annotations

import json
import textwrap
from typing import Any

import click

from servicefactory.cli.common import CommandFailed
from servicefactory.cli.common import registry as _registry


@click.command(epilog="""\b
Examples:
  servicefactory describe Test
  servicefactory describe Test --json > openapi.json
""")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the OpenAPI 3.1 document itself.")
@click.option("--timeout", type=click.FloatRange(0.001, 86400), default=10.0, show_default=True,
              help="Seconds to wait for the answer.")
def describe(name: str, as_json: bool, timeout: float) -> None:
    """Print the actions of the running service NAME: what each does and the JSON it takes and returns."""
    from servicefactory.http.client import perform

    document = perform(name, "openapi.json", timeout=timeout, registry=_registry())
    if not isinstance(document, dict) or not isinstance(document.get("paths"), dict):
        raise CommandFailed(f"{name} answered /openapi.json with something that is not an OpenAPI document", 8)
    if as_json:
        click.echo(json.dumps(document, indent=2))
        return
    click.echo(render(document))


def render(document: dict[str, Any]) -> str:
    """The document as text: a header, then per action its methods, doc, data and result."""
    from servicefactory._schema import schema_text

    info = document.get("info", {})
    lines = [f"{info.get('title', '?')} (servicefactory {info.get('version', '?')})"]
    if info.get("description"):
        lines += textwrap.indent(info["description"], "  ").splitlines()
    for path, item in sorted(document["paths"].items()):
        operations = {method.upper(): operation for method, operation in item.items() if isinstance(operation, dict)}
        post = operations.get("POST") or next(iter(operations.values()), {})
        lines += ["", f"{path.lstrip('/')}  ({', '.join(sorted(operations))})"]
        doc = post.get("description") or post.get("summary") or ""
        if doc and doc != path.lstrip("/"):
            lines += textwrap.indent(doc, "    ").splitlines()
        body = post.get("requestBody", {}).get("content", {}).get("application/json", {})
        if "POST" in operations:
            lines.append(f"    data:    {schema_text(body.get('schema', {}))}")
        result = post.get("responses", {}).get("200", {}).get("content", {}).get("application/json", {})
        lines.append(f"    returns: {schema_text(result.get('schema', {}))}")
    return "\n".join(lines)
