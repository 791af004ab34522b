"""Validate answers and events against `server/api/openapi.json`, the document of the HTTP API.

`validate_response(method, path, status, body)` finds the documented operation for a
concrete request path (with or without the `/api/v1` prefix of the document's server),
takes the response schema for the status (the exact code, else `default`) and checks the
body with jsonschema (Draft 2020-12); an answer of one of Zulip's endpoints is then also
checked against Zulip's documented shape (`tests.helpers.zulip_schema`), so eventq's
document and Zulip's both hold for every answer a test sees. `validate_event(event)`
checks one delivered event (with its `id`) the same two ways. Both raise
`AssertionError` with a readable message.

`$ref`s are JSON pointers into the document; schemas are validated by reference
(`urn:eventq:openapi#/...`) through a `referencing.Registry` holding the whole document,
so every `#/components/...` inside them resolves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from jsonschema.exceptions import (  # type: ignore[import-untyped]
    ValidationError,
    best_match,
    relevance,
)
from referencing import Registry
from referencing.jsonschema import DRAFT202012

# Imported for its effect: it adds Zulip's message shapes to zulip_schema's tables.
from tests.helpers import zulip_messages, zulip_schema  # noqa: F401

DOCUMENT_PATH = Path(__file__).resolve().parents[2] / "server" / "api" / "openapi.json"
# The document is registered under this URI, so schemas are referenced as URI#pointer.
DOCUMENT_URI = "urn:eventq:openapi"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_INTEGER_SEGMENT = re.compile(r"-?\d+")


@cache
def load_document() -> dict[str, Any]:
    """The OpenAPI document, parsed once (callers must not modify it)."""
    document: dict[str, Any] = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
    return document


@cache
def _registry() -> Registry[Any]:
    resource = DRAFT202012.create_resource(load_document())
    registry: Registry[Any] = Registry().with_resource(DOCUMENT_URI, resource)
    return registry


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _pointer(*tokens: str) -> str:
    return "".join("/" + _escape(token) for token in tokens)


def resolve_ref(ref: str) -> Any:
    """The value a local `$ref` (`#/a/b`) points at; KeyError if it points nowhere."""
    if not ref.startswith("#"):
        raise KeyError(f"not a local reference: {ref}")
    node: Any = load_document()
    pointer = ref[1:]
    if not pointer:
        return node
    if not pointer.startswith("/"):
        raise KeyError(f"not a JSON pointer: {ref}")
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise KeyError(f"{ref}: no {token!r}")
    return node


_WHOLE_DOCUMENT: Any = object()


def iter_refs(node: Any = _WHOLE_DOCUMENT, where: str = "#") -> Iterator[tuple[str, str]]:
    """Every `$ref` of the document (or of `node`), as (location pointer, ref) pairs."""
    # A sentinel, not None: null is a value the document holds (`enum: [1, null]`).
    if node is _WHOLE_DOCUMENT:
        node = load_document()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield where, ref
        for key, value in node.items():
            yield from iter_refs(value, f"{where}/{_escape(key)}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from iter_refs(value, f"{where}/{index}")


def _deref(node: Any) -> Any:
    """Follow OpenAPI-level `$ref`s (responses, parameters) to the object they name."""
    seen = 0
    while isinstance(node, dict) and isinstance(node.get("$ref"), str):
        node = resolve_ref(node["$ref"])
        seen += 1
        if seen > 20:
            raise AssertionError("$ref cycle in the OpenAPI document")
    return node


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every documented operation as (METHOD, templated path, operation object)."""
    for path, item in load_document()["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield method.upper(), path, item[method]


def _relative_path(path: str) -> str:
    """`path` without scheme, host, query and the server's base URL (`/api/v1`)."""
    path = urlsplit(path).path
    for server in load_document().get("servers", []):
        base = urlsplit(server["url"]).path.rstrip("/")
        if base and (path == base or path.startswith(base + "/")):
            return path[len(base) :] or "/"
    return path


def _path_parameter_schema(template: str, name: str) -> dict[str, Any]:
    item = load_document()["paths"][template]
    candidates = [item.get("parameters", [])]
    candidates += [item[m].get("parameters", []) for m in HTTP_METHODS if m in item]
    for parameters in candidates:
        for parameter in map(_deref, parameters):
            if parameter.get("in") == "path" and parameter.get("name") == name:
                schema: dict[str, Any] = _deref(parameter.get("schema", {}))
                return schema
    return {}


def _segment_matches(template: str, pattern: str, segment: str) -> bool:
    if not (pattern.startswith("{") and pattern.endswith("}")):
        return pattern == segment
    if not segment:
        return False
    kind = _path_parameter_schema(template, pattern[1:-1]).get("type")
    return kind != "integer" or _INTEGER_SEGMENT.fullmatch(segment) is not None


def match_path(path: str) -> str | None:
    """The templated path of the document that the concrete `path` matches, or None.

    Accepts `/api/v1/users/12/reactivate` as well as `/users/12/reactivate`. A literal
    segment beats a template (`/users/me/...` before `/users/{user_id}/...`), and a
    template typed integer only matches an integer segment.
    """
    relative = _relative_path(path)
    segments = relative.split("/")
    best: tuple[int, str] | None = None
    for template in load_document()["paths"]:
        patterns = template.split("/")
        if len(patterns) != len(segments):
            continue
        if all(_segment_matches(template, p, s) for p, s in zip(patterns, segments, strict=True)):
            templated = sum(p.startswith("{") for p in patterns)
            if best is None or templated < best[0]:
                best = (templated, template)
    return None if best is None else best[1]


def _schema_pointer(*tokens: str) -> str:
    # referencing unquotes the fragment, so `{`, `}` and friends are percent-encoded.
    return DOCUMENT_URI + "#" + quote(_pointer(*tokens), safe="/~")


def _best(errors: Iterable[ValidationError]) -> ValidationError | None:
    """The most telling error: like `best_match`, but inside a oneOf/anyOf it follows the
    branch whose constants matched the instance.

    For an event with an unknown field, say, jsonschema only says "is not valid under
    any of the given schemas"; the branch with the same `type` and `op` says which field.
    """
    found = list(errors)
    # A schema closed with unevaluatedProperties reports every property as unevaluated
    # when one of its allOf parts fails (say, on a missing field): that part is the news.
    telling = [e for e in found if e.validator != "unevaluatedProperties"] or found
    top = max(telling, key=relevance, default=None)
    if top is None:
        return None
    if top.validator in ("oneOf", "anyOf") and top.context:
        branches: dict[Any, list[ValidationError]] = {}
        for sub in top.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        meant = [
            errors
            for errors in branches.values()
            if not any(
                e.validator in ("const", "enum") and len(e.relative_path) == 1 for e in errors
            )
        ]
        if len(meant) == 1:
            return _best(meant[0])
    return best_match([top])


def _check(schema_ref: str, instance: object, what: str) -> None:
    validator = Draft202012Validator({"$ref": schema_ref}, registry=_registry())
    error = _best(validator.iter_errors(instance))
    if error is None:
        return
    shown = json.dumps(instance, sort_keys=True, default=repr)
    if len(shown) > 2000:
        shown = shown[:2000] + "..."
    raise AssertionError(
        f"{what}: at {error.json_path}: {error.message}\n"
        f"  schema path: {'/'.join(map(str, error.absolute_schema_path))}\n"
        f"  body: {shown}"
    )


def validate_response(method: str, path: str, status: int, body: object) -> None:
    """Assert `body` (parsed JSON, or its text/bytes) is a documented answer.

    `path` is the concrete request path (query string allowed). Raises AssertionError
    for an undocumented path, method or status, or a body that does not match.
    """
    what = f"{method.upper()} {path} -> {status}"
    if isinstance(body, bytes | str):
        try:
            body = json.loads(body)
        except ValueError as error:
            raise AssertionError(f"{what}: the body is not JSON ({error})") from None
    template = match_path(path)
    if template is None:
        raise AssertionError(f"{what}: the path is not in the OpenAPI document")
    item = load_document()["paths"][template]
    operation = item.get(method.lower())
    if operation is None:
        raise AssertionError(f"{what}: {template} documents no {method.upper()} operation")
    responses = operation.get("responses", {})
    code = str(status) if str(status) in responses else "default"
    if code not in responses:
        raise AssertionError(
            f"{what}: status {status} is not documented for {method.upper()} {template} "
            f"(documented: {', '.join(sorted(responses))})"
        )
    tokens = ["paths", template, method.lower(), "responses", code]
    response = responses[code]
    while isinstance(response, dict) and isinstance(response.get("$ref"), str):
        ref = response["$ref"]
        if not ref.startswith("#/"):
            raise AssertionError(f"{what}: non-local $ref {ref}")
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in ref[2:].split("/")]
        response = resolve_ref(ref)
    media = response.get("content", {}).get("application/json")
    if media is None:
        raise AssertionError(f"{what}: the {code} response documents no application/json")
    if "schema" not in media:
        return
    tokens += ["content", "application/json", "schema"]
    _check(_schema_pointer(*tokens), body, f"{what} ({method.upper()} {template})")
    if zulip_schema.is_zulip_endpoint(method, template):
        zulip_schema.check_answer(method, template, status, body)


def validate_event(event: dict[str, Any]) -> None:
    """Assert `event` (as delivered, with its `id`) matches one kind of the Event schema,
    and Zulip's documented shape of its kind."""
    kind = f"{event.get('type')}/{event.get('op')}" if isinstance(event, dict) else "?"
    _check(_schema_pointer("components", "schemas", "Event"), event, f"event {kind}")
    zulip_schema.check_event(event)
