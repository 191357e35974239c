"""Handlers' type hints as JSON Schemas: the check of request data (answered 422 when it does not
match, before the handler runs) and the OpenAPI 3.1 document of a service's actions.

A small translator of our own: JSON carries only null, booleans, numbers, strings, arrays and
objects, so the hints that mean something for it are few (`None`, `bool`, `int`, `float`, `str`,
`list[T]`, `tuple[...]`, `dict[str, T]`, `X | Y`, `Optional`, `Literal`, `TypedDict`, `Any`).
Any other hint, like no hint at all, means any JSON and is not checked. pydantic would do this
too but costs 86-120 ms and ~15 MiB to import into every service (measured).
"""
from __future__ import annotations

import collections.abc
import logging
import types
import typing
from typing import Any, Callable, Mapping

logger = logging.getLogger(__name__)

#: a checker returns the value (an integral float given for an `int` comes back as an int) or raises Invalid
Check = Callable[[Any, str], Any]
_MISSING = object()
_NONE_TYPE = type(None)
_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence, collections.abc.Iterable,
              collections.abc.Collection)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


class Invalid(ValueError):
    """Data that does not match its handler's hint; the message says where and what."""


def _kind(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def _fail(where: str, expected: str, value: Any) -> Invalid:
    return Invalid(f"{where}: expected {expected}, got {_kind(value)}")


def translate(hint: Any, seen: frozenset = frozenset()) -> tuple[dict, Check | None]:
    """(JSON Schema, checker) of a type hint; the checker is None where anything goes. `seen`: the
    TypedDicts being translated around this hint (one that contains itself is an object inside)."""
    if hint is _MISSING or hint is Any or hint is object:
        return {}, None
    if hint is None or hint is _NONE_TYPE:
        return {"type": "null"}, _check_null
    if hint is bool:
        return {"type": "boolean"}, _check_bool
    if hint is int:
        return {"type": "integer"}, _check_int
    if hint is float:
        return {"type": "number"}, _check_number
    if hint is str:
        return {"type": "string"}, _check_str
    if hint in _SEQUENCES:
        return {"type": "array"}, _check_array
    if hint in _MAPPINGS:
        return {"type": "object"}, _check_object
    if typing.is_typeddict(hint):
        if hint in seen:  # a tree of itself: checked at the top, an object further down
            return {"type": "object"}, _check_object
        return _typed_dict(hint, seen | {hint})
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return translate(args[0], seen)
    if origin is typing.Union or origin is types.UnionType:
        return _union(args, seen)
    if origin is typing.Literal:
        return _literal(args) if any(_json_literal(value) for value in args) else _unknown(hint)
    if origin is tuple:
        return _tuple(args, seen)
    if origin in _SEQUENCES:
        return _array(args[0] if args else _MISSING, seen)
    if origin in _MAPPINGS:
        key = args[0] if args else str
        if key is not str and key is not Any:
            return _unknown(hint)  # JSON object keys are strings: no other key type can be met
        return _object(args[1] if len(args) > 1 else _MISSING, seen)
    return _unknown(hint)


def _unknown(hint: Any) -> tuple[dict, None]:
    return {"description": f"any JSON (the hint {_hint_text(hint)} has no JSON Schema here)"}, None


def _hint_text(hint: Any) -> str:
    return getattr(hint, "__qualname__", None) or repr(hint)


def _check_null(value: Any, where: str) -> Any:
    if value is not None:
        raise _fail(where, "null", value)
    return value


def _check_bool(value: Any, where: str) -> Any:
    if value is not True and value is not False:
        raise _fail(where, "a boolean", value)
    return value


def _check_int(value: Any, where: str) -> Any:
    kind = type(value)
    if kind is int:
        return value
    if kind is float and value.is_integer():
        return int(value)  # JSON Schema: 1.0 is an integer; the handler's hint says int
    raise _fail(where, "an integer", value)


def _check_number(value: Any, where: str) -> Any:
    if type(value) is not int and type(value) is not float:
        raise _fail(where, "a number", value)
    return value


def _check_str(value: Any, where: str) -> Any:
    if type(value) is not str:
        raise _fail(where, "a string", value)
    return value


def _check_array(value: Any, where: str) -> Any:
    if type(value) is not list:
        raise _fail(where, "an array", value)
    return value


def _check_object(value: Any, where: str) -> Any:
    if type(value) is not dict:
        raise _fail(where, "an object", value)
    return value


def _check_in_place(container: Any, key: Any, item: Any, check: Check, where: str) -> None:
    """Check one member of a decoded body, putting back what the check made of it (the body is ours)."""
    checked = check(item, where)
    if checked is not item:
        container[key] = checked


def _array(item_hint: Any, seen: frozenset) -> tuple[dict, Check]:
    item_schema, item_check = translate(item_hint, seen)
    schema = {"type": "array", "items": item_schema} if item_schema else {"type": "array"}
    if item_check is None:
        return schema, _check_array

    def check(value: Any, where: str) -> Any:
        if type(value) is not list:
            raise _fail(where, "an array", value)
        for index, item in enumerate(value):
            _check_in_place(value, index, item, item_check, f"{where}[{index}]")
        return value

    return schema, check


def _tuple(args: tuple, seen: frozenset) -> tuple[dict, Check]:
    if not args or args == ((),):
        return {"type": "array", "maxItems": 0}, _array_of_length(0, [])
    if len(args) == 2 and args[1] is Ellipsis:
        return _array(args[0], seen)
    parts = [translate(arg, seen) for arg in args]
    schema = {"type": "array", "prefixItems": [part[0] for part in parts], "items": False,
              "minItems": len(parts), "maxItems": len(parts)}
    return schema, _array_of_length(len(parts), [part[1] for part in parts])


def _array_of_length(length: int, checks: list[Check | None]) -> Check:
    def check(value: Any, where: str) -> Any:
        if type(value) is not list:
            raise _fail(where, f"an array of {length}", value)
        if len(value) != length:
            raise Invalid(f"{where}: expected an array of {length}, got {len(value)} item{'s' * (len(value) != 1)}")
        for index, (item, item_check) in enumerate(zip(value, checks)):
            if item_check is not None:
                _check_in_place(value, index, item, item_check, f"{where}[{index}]")
        return value

    return check


def _object(value_hint: Any, seen: frozenset) -> tuple[dict, Check]:
    value_schema, value_check = translate(value_hint, seen)
    schema = {"type": "object", "additionalProperties": value_schema} if value_schema else {"type": "object"}
    if value_check is None:
        return schema, _check_object

    def check(value: Any, where: str) -> Any:
        if type(value) is not dict:
            raise _fail(where, "an object", value)
        for key, item in value.items():  # same keys: changing values while iterating is safe
            _check_in_place(value, key, item, value_check, f"{where}[{key!r}]")
        return value

    return schema, check


def _typed_dict(hint: Any, seen: frozenset) -> tuple[dict, Check]:
    try:
        fields = typing.get_type_hints(hint)
    except Exception as exc:  # a forward reference that does not resolve
        logger.warning("cannot read the fields of %s (%s): its data is not checked", _hint_text(hint), exc)
        return {"type": "object"}, _check_object
    required = sorted(getattr(hint, "__required_keys__", fields))
    parts = {name: translate(field, seen) for name, field in fields.items()}
    schema: dict[str, Any] = {"type": "object", "properties": {name: part[0] for name, part in parts.items()}}
    if required:
        schema["required"] = required
    checks = {name: part[1] for name, part in parts.items() if part[1] is not None}

    def check(value: Any, where: str) -> Any:
        if type(value) is not dict:
            raise _fail(where, "an object", value)
        for name in required:
            if name not in value:
                raise Invalid(f"{where}: the key {name!r} is missing")
        for name, field_check in checks.items():
            if name in value:
                _check_in_place(value, name, value[name], field_check, f"{where}[{name!r}]")
        return value

    return schema, check


def _union(args: tuple, seen: frozenset) -> tuple[dict, Check | None]:
    parts = [translate(arg, seen) for arg in args]
    if any(check is None for _, check in parts):
        return {}, None  # one member takes anything: so does the union
    schema = {"anyOf": [part[0] for part in parts]}
    checks = [part[1] for part in parts]
    expected = " or ".join(_schema_text(part[0]) for part in parts)

    def check(value: Any, where: str) -> Any:
        errors = []
        for member in checks:
            try:
                return member(value, where)
            except Invalid as error:
                errors.append(error)
        # one member of the right JSON type failed deeper inside (a missing key): that is the news
        deeper = [error for error in errors if not str(error).startswith(f"{where}: expected")]
        raise deeper[0] if len(deeper) == 1 else _fail(where, expected, value)

    return schema, check


def _json_literal(value: Any) -> bool:
    return value is None or type(value) in (bool, int, float, str)


def _literal(values: tuple) -> tuple[dict, Check]:
    allowed = [value for value in values if _json_literal(value)]  # an enum member is no JSON value
    schema = {"enum": allowed}

    def check(value: Any, where: str) -> Any:
        # by type too: True == 1 in Python, yet JSON's true is not the number 1
        if any(type(value) is type(option) and value == option for option in allowed):
            return value
        raise Invalid(f"{where}: {cut_repr(value)} is not one of {', '.join(map(repr, allowed))}")

    return schema, check


def cut_repr(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def handler_hints(function: Callable) -> tuple[Any, Any]:
    """(data hint, return hint) of a handler `function(self, data)`; _MISSING where there is none."""
    try:
        hints = typing.get_type_hints(function)
    except Exception as exc:  # an unresolvable forward reference, a hint that is not a type
        logger.warning("cannot read the type hints of %s (%s: %s): its data is not checked",
                       getattr(function, "__qualname__", function), type(exc).__name__, exc)
        return _MISSING, _MISSING
    code = getattr(function, "__code__", None)
    parameter = code.co_varnames[1] if code is not None and code.co_argcount >= 2 else None
    if parameter is None or parameter not in hints:
        names = [name for name in hints if name != "return"]
        parameter = names[0] if names else None
    return hints.get(parameter, _MISSING) if parameter else _MISSING, hints.get("return", _MISSING)


def checks_of(cls: type, actions: Mapping[str, Any]) -> dict[str, Check]:
    """The request checks of the actions of `cls` whose handler has a data hint that narrows JSON."""
    checks = {}
    for name, action in actions.items():
        data_hint, _ = handler_hints(getattr(cls, action.attribute))
        try:
            _, check = translate(data_hint)
        except Exception as exc:  # a hint of a shape nobody foresaw must not keep the service from starting
            logger.warning("cannot translate the hint of %s.%s (%s: %s): its data is not checked",
                           cls.__qualname__, action.attribute, type(exc).__name__, exc)
            continue
        if check is not None:
            checks[name] = check
    return checks


def _accepts_null(schema: dict) -> bool:
    if not schema or "description" in schema and len(schema) == 1:
        return True
    if schema.get("type") == "null":
        return True
    if "enum" in schema:
        return None in schema["enum"]
    return any(_accepts_null(member) for member in schema.get("anyOf", ()))


def _schema_text(schema: dict) -> str:
    """A short, terminal-friendly rendering of a schema: `[integer]`, `{string: number}`, `string | null`."""
    if not schema or set(schema) == {"description"}:
        return "any"
    if "anyOf" in schema:
        return " | ".join(_schema_text(member) for member in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(map(_json_text, schema["enum"]))
    kind = schema.get("type")
    if kind == "array":
        if "prefixItems" in schema:
            return "[" + ", ".join(_schema_text(item) for item in schema["prefixItems"]) + "]"
        return f"[{_schema_text(schema.get('items', {}))}]" if "items" in schema else "array"
    if kind == "object":
        if "properties" in schema:
            required = set(schema.get("required", ()))
            fields = ", ".join(f"{name}{'' if name in required else '?'}: {_schema_text(field)}"
                               for name, field in schema["properties"].items())
            return "{" + fields + "}"
        if "additionalProperties" in schema:
            return f"{{string: {_schema_text(schema['additionalProperties'])}}}"
        return "object"
    return str(kind)


schema_text = _schema_text


def _json_text(value: Any) -> str:
    import json
    return json.dumps(value)


#: the error answers every operation may give (the README's table), and when
_ERRORS = {
    "400": "malformed JSON, invalid UTF-8, nested too deeply, a number out of range, a lone surrogate",
    "401": "token required and missing or wrong",
    "403": "Host or Origin of another site, or a caller who is not the service's user (on loopback)",
    "413": "body over the service's limit",
    "415": "a POST without Content-Type: application/json",
    "421": "Servicefactory-Service names another service (a stale address); nothing run",
    "422": "the data does not match the handler's type hints; the handler was not called",
    "429": "too many wrong tokens from this peer: retry after Retry-After seconds",
    "500": "the handler raised (its exception's type and message), or its result is not JSON",
    "503": "the service is stopping or not started; nothing run, safe to retry",
}


def openapi_document(name: str, version: str, cls: type, actions: Mapping[str, Any],
                     require_token: bool = False) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a service: one operation per action and method."""
    import inspect

    paths: dict[str, Any] = {}
    for action in sorted(actions.values(), key=lambda action: action.name):
        function = getattr(cls, action.attribute)
        data_hint, result_hint = handler_hints(function)
        request_schema, check = _translated(data_hint)
        result_schema, _ = _translated(result_hint)
        doc = inspect.cleandoc(function.__doc__ or "")
        item: dict[str, Any] = {}
        for method in action.methods:
            operation: dict[str, Any] = {
                "operationId": action.name if method == "POST" else f"{action.name}.get",
                "summary": doc.splitlines()[0] if doc else action.name,
                "responses": _responses(result_schema, method, check is not None),
            }
            if doc:
                operation["description"] = doc
            if method == "POST":
                # required even where null is accepted: a POST without Content-Type: application/json
                # is refused (415), however empty, and OpenAPI cannot say "a type but no body"
                operation["requestBody"] = {
                    "required": True,
                    "description": "the handler's data (an empty body with the content type is null)",
                    "content": {"application/json": {"schema": request_schema}}}
            item[method.lower()] = operation
        paths[f"/{action.name}"] = item
    info: dict[str, Any] = {"title": name, "version": version}
    class_doc = inspect.cleandoc(cls.__doc__ or "")
    if class_doc:
        info["description"] = class_doc
    document: dict[str, Any] = {
        "openapi": "3.1.0", "info": info, "paths": paths,
        "components": {
            "schemas": {"Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {"type": "object", "required": ["type", "message"],
                                         "properties": {"type": {"type": "string"},
                                                        "message": {"type": "string"}}}}}},
            "responses": {code: {"description": text, "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
                for code, text in _ERRORS.items()},
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer",
                                          "description": "the service's token (SERVICEFACTORY_TOKEN)"}},
        },
    }
    document["components"]["responses"]["401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    document["components"]["responses"]["429"]["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    if require_token:
        document["security"] = [{"token": []}]
    return document


def _translated(hint: Any) -> tuple[dict, Check | None]:
    try:
        return translate(hint)
    except Exception:  # logged when the checks were built at start; the document says any JSON
        return _unknown(hint)


def _responses(result_schema: dict, method: str, checked: bool) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": result_schema}}
    if _accepts_null(result_schema):
        # a handler returning None answers `ok` to a client that does not ask for JSON
        content["text/plain"] = {"schema": {"type": "string"}}
    responses: dict[str, Any] = {"200": {"description": "the handler's result", "content": content}}
    for code in _ERRORS:
        if code in ("400", "413", "415") and method != "POST" or code == "422" and not checked:
            continue
        responses[code] = {"$ref": f"#/components/responses/{code}"}
    return responses
