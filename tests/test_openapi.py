"""GET /openapi.json, the 422 check of typed handlers' data, `describe`, and schemathesis fuzzing a
live service against its own document."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Iterator, Literal

import pytest

from support import request
from servicefactory import Service
from servicefactory._schema import translate
from servicefactory.errors import InvalidData
from servicefactory.http import client
from servicefactory.testing import running

TOKEN = "openapi-test-token-0123456789abcdefghijklmnopq"


# a module of its own: the CLI tests run it in a supervised process, the others in this one
TYPED_SOURCE = '''
from typing import Any, Literal, Optional, TypedDict

from servicefactory import Service


class Point(TypedDict):
    """A point on a grid."""

    x: int
    y: float


@Service.API.endpoint(port=0)
class Typed(Service.base):
    """Statistics over numbers, and an untyped echo."""

    def __init__(self) -> None:
        self.called: list[tuple[str, Any]] = []

    def loop(self) -> None:
        self.sleep(30)

    @Service.API.handle("mean")
    def mean(self, data: list[float]) -> dict[str, float]:
        """The mean and the count of some numbers (0 for none).

        Each number counts once."""
        self.called.append(("mean", data))
        # each term divided first: a sum of huge floats would overflow to inf, which JSON cannot carry
        return {"mean": sum(value / len(data) for value in data) if data else 0.0, "count": float(len(data))}

    @Service.API.handle("scale")
    def scale(self, data: dict[str, int]) -> dict[str, int]:
        """Each value doubled."""
        self.called.append(("scale", data))
        return {key: value * 2 for key, value in data.items()}

    @Service.API.handle("norm")
    def norm(self, data: Optional[Point]) -> list[float]:
        """A point as a pair; none is the origin."""
        self.called.append(("norm", data))
        return [data["x"], data["y"]] if data else [0, 0.0]

    @Service.API.handle("label")
    def label(self, data: tuple[int, str]) -> dict[str, Any]:
        """A numbered label."""
        self.called.append(("label", data))
        return {"number": data[0], "label": data[1]}

    @Service.API.handle("mode", methods=("GET", "POST"))
    def mode(self, data: Literal["fast", "slow"] | None) -> str:
        """The mode asked for (fast by default)."""
        return data or "fast"

    @Service.API.handle("flag")
    def flag(self, data: bool) -> bool:
        """The flag, inverted."""
        return not data

    @Service.API.handle("echo")
    def echo(self, data):
        """Anything back."""
        self.called.append(("echo", data))
        return data

    @Service.API.handle("forget")
    def forget(self, data: Any) -> None:
        """Nothing back."""
'''
TYPED: dict[str, Any] = {"__name__": "typed_service"}
exec(TYPED_SOURCE, TYPED)
Typed = TYPED["Typed"]


@pytest.fixture(autouse=True)
def _close_client_connections() -> Iterator[None]:
    yield
    client.close_connections()


@pytest.fixture
def typed() -> Iterator[Typed]:
    with running(Typed()) as service:
        yield service


def post(port: int, path: str, body: bytes) -> tuple[int, Any]:
    status, _, answer = request(port, "POST", path, body, **{"Content-Type": "application/json",
                                                          "Accept": "application/json"})
    return status, json.loads(answer)


def document_of(port: int) -> dict:
    status, headers, body = request(port, "GET", "/openapi.json")
    assert status == 200 and headers["content-type"] == "application/json", (status, body)
    return json.loads(body)


def test_the_document_has_one_operation_per_action_with_its_doc_and_the_schemas_of_its_hints(typed):
    document = document_of(typed.address[1])
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "Typed"
    assert document["info"]["description"] == "Statistics over numbers, and an untyped echo."
    assert set(document["paths"]) == {f"/{name}" for name in
                                      ("mean", "scale", "norm", "label", "mode", "flag", "echo", "forget",
                                       "health", "actions", "shutdown")}
    mean = document["paths"]["/mean"]
    assert set(mean) == {"post"}  # a GET of a POST-only action is no operation of it
    operation = mean["post"]
    assert operation["operationId"] == "mean"
    assert operation["summary"] == "The mean and the count of some numbers (0 for none)."
    assert operation["description"] == "The mean and the count of some numbers (0 for none).\n\nEach number counts once."
    assert operation["requestBody"]["content"]["application/json"]["schema"] == \
        {"type": "array", "items": {"type": "number"}}
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == \
        {"type": "object", "additionalProperties": {"type": "number"}}
    # the README's error table, as responses every operation may give; 422 where data is checked
    assert {"400", "401", "403", "413", "415", "421", "422", "429", "500", "503"} <= set(operation["responses"])
    error = document["components"]["responses"]["500"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/Error"}
    assert set(document["paths"]["/mode"]) == {"get", "post"}
    assert "422" not in document["paths"]["/echo"]["post"]["responses"]
    assert document["paths"]["/echo"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {}
    forget = document["paths"]["/forget"]["post"]["responses"]["200"]["content"]
    assert forget == {"application/json": {"schema": {"type": "null"}}, "text/plain": {"schema": {"type": "string"}}}
    norm = document["paths"]["/norm"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert norm == {"anyOf": [{"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "number"}},
                               "required": ["x", "y"]}, {"type": "null"}]}
    assert "security" not in document  # on loopback its own user needs no token


@pytest.mark.parametrize(("hint", "schema"), [
    (int, {"type": "integer"}), (str, {"type": "string"}), (None, {"type": "null"}), (Any, {}),
    (list, {"type": "array"}), (dict, {"type": "object"}),
    (list[dict[str, bool]], {"type": "array", "items": {"type": "object", "additionalProperties": {"type": "boolean"}}}),
    (tuple[int, ...], {"type": "array", "items": {"type": "integer"}}),
    (tuple[int, str], {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "items": False,
                       "minItems": 2, "maxItems": 2}),
    (int | str, {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
    (Literal["a", 1], {"enum": ["a", 1]}),
    (int | Any, {}),
])
def test_type_hints_become_json_schemas(hint, schema):
    assert translate(hint)[0] == schema


def test_hints_without_a_json_meaning_mean_any_json_and_are_not_checked():
    schema, check = translate(dict[int, str])  # JSON keys are strings: no int key can arrive
    assert check is None and schema["description"].startswith("any JSON")
    schema, check = translate(set)
    assert check is None and "set" in schema["description"]


TREE = """
from __future__ import annotations

import enum
from typing import Literal, TypedDict

from servicefactory import Service


class Node(TypedDict):
    name: str
    children: list[Node]


class Colour(enum.Enum):
    RED = 1


@Service.API.endpoint(port=0)
class Tree(Service.base):
    @Service.API.handle("count")
    def count(self, data: Node) -> int:
        \"\"\"How many nodes.\"\"\"
        return 1 + sum(self.count(child) for child in data["children"])

    @Service.API.handle("colour")
    def colour(self, data: Literal[Colour.RED]) -> str:
        return repr(data)
"""


def test_a_typed_dict_that_contains_itself_is_checked_at_its_top_and_the_service_starts(monkeypatch):
    module = types.ModuleType("tree_service")  # a real module: a TypedDict's hints resolve in it
    monkeypatch.setitem(sys.modules, "tree_service", module)
    exec(TREE, module.__dict__)
    with running(module.Tree()) as service:
        port = service.address[1]
        tree = {"name": "a", "children": [{"name": "b", "children": [{"name": "c", "children": []}]}]}
        assert post(port, "/count", json.dumps(tree).encode()) == (200, 3)
        assert post(port, "/count", b'{"name": "a"}')[1]["error"]["message"] == "data: the key 'children' is missing"
        assert post(port, "/count", b'{"name": "a", "children": [1]}')[1]["error"]["message"] == \
            "data['children'][0]: expected an object, got integer"
        # a Literal of no JSON value (an enum member) means any JSON, not "nothing matches"
        assert post(port, "/colour", b"1")[0] == 200
        schema = document_of(port)["paths"]["/count"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["children"] == {"type": "array", "items": {"type": "object"}}


def test_data_that_does_not_match_the_hints_is_answered_422_before_the_handler_runs(typed):
    port = typed.address[1]
    cases = [
        ("/mean", b'[1, "two"]', "data[1]: expected a number, got string"),
        ("/mean", b"", "data: expected an array, got null"),  # an empty body is null
        ("/mean", b"[true]", "data[0]: expected a number, got boolean"),
        ("/scale", b'{"a": 1.5}', "data['a']: expected an integer, got number"),
        ("/scale", b'{"a": false}', "data['a']: expected an integer, got boolean"),
        ("/norm", b'{"x": 1}', "data: the key 'y' is missing"),
        ("/label", b"[1]", "data: expected an array of 2, got 1 item"),
        ("/label", b'[1, 2]', "data[1]: expected a string, got integer"),
        ("/mode", b'"medium"', "data: 'medium' is not one of 'fast', 'slow'"),
        ("/flag", b"1", "data: expected a boolean, got integer"),
    ]
    for path, body, message in cases:
        status, answer = post(port, path, body)
        assert (status, answer) == (422, {"error": {"type": "ValidationError", "message": message}}), path
    assert typed.called == []
    # what matches goes through; JSON Schema's integers include 2.0, handed over as the int 2
    assert post(port, "/scale", b'{"a": 2.0, "b": -3}') == (200, {"a": 4, "b": -6})
    assert post(port, "/mean", b"[1, 2.5]") == (200, {"mean": 1.75, "count": 2.0})
    assert post(port, "/norm", b"") == (200, [0, 0.0])
    assert post(port, "/mode", b"") == (200, "fast")
    assert typed.called[0] == ("scale", {"a": 2, "b": -3}) and type(typed.called[0][1]["a"]) is int
    # no hints: nothing changes, any JSON reaches the handler
    for body in (b"", b'"x"', b'{"deep": [[[1]]]}', b"[1, null, true]"):
        assert post(port, "/echo", body) == (200, json.loads(body or b"null"))
    counters = Typed.perform("health")["counters"]["actions"]
    assert counters["mean"]["rejected"] == 3 and counters["mean"]["calls"] == 4


def test_perform_raises_invalid_data_and_the_cli_exits_2_with_the_validation_error(sf):
    sf.write("typed_service.py", TYPED_SOURCE)
    sf.start("typed_service:Typed")
    with pytest.raises(InvalidData, match=r"data\[0\]: expected a number, got string"):
        Typed.perform("mean", ["x"])
    result = sf("perform", "Typed", "mean", '["x"]')
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1].endswith("data[0]: expected a number, got string"), result.stderr
    assert sf("perform", "Typed", "mean", "[1, 3]").stdout.strip() == '{"mean": 2.0, "count": 2.0}'


def test_the_document_obeys_the_same_host_origin_and_token_rules_and_says_a_token_is_needed():
    @Service.API.endpoint(port=0, require_token=True)
    class Guarded(Service.base):
        @Service.API.handle("echo")
        def echo(self, data: int) -> int:
            return data

    with running(Guarded(), token=TOKEN) as service:
        port = service.address[1]
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert request(port, "GET", "/openapi.json")[0] == 401
        assert request(port, "GET", "/openapi.json", Origin="http://evil.example", **bearer)[0] == 403
        assert request(port, "GET", "/openapi.json", Host="evil.example", **bearer)[0] == 403
        status, _, body = request(port, "GET", "/openapi.json", **bearer)
        # POST works too, as for an action: what `perform NAME openapi.json` and `describe` send
        assert client.perform("Guarded", "openapi.json", token=TOKEN) == json.loads(body)
    document = json.loads(body)
    assert document["security"] == [{"token": []}]
    assert document["components"]["securitySchemes"]["token"] == {
        "type": "http", "scheme": "bearer", "description": "the service's token (SERVICEFACTORY_TOKEN)"}


def test_a_users_action_cannot_take_the_documents_name_by_accident():
    with pytest.raises(TypeError, match=r"built-in route 'openapi.json'"):
        class Clash(Service.base):
            @Service.API.handle("openapi.json")
            def mine(self, data: Any) -> Any:
                return {}


def test_a_hint_that_cannot_be_resolved_is_logged_and_means_any_json(caplog):
    namespace: dict[str, Any] = {"__name__": "forward_service"}
    exec("from __future__ import annotations\n"
         "from servicefactory import Service\n"
         "@Service.API.endpoint(port=0)\n"
         "class Forward(Service.base):\n"
         "    @Service.API.handle('echo')\n"
         "    def echo(self, data: Missing) -> int:\n"
         "        return data\n", namespace)
    with running(namespace["Forward"]()) as service:
        port = service.address[1]
        assert post(port, "/echo", b'"anything"') == (200, "anything")
        schema = document_of(port)["paths"]["/echo"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {}
    assert any("cannot read the type hints of Forward.echo" in record.getMessage() for record in caplog.records)


def test_describe_prints_each_action_with_its_doc_and_schemas(sf):
    sf.write("typed_service.py", TYPED_SOURCE)
    sf.start("typed_service:Typed")
    result = sf("describe", "Typed")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("Typed (servicefactory ")
    assert "  Statistics over numbers, and an untyped echo." in text
    assert "\nmean  (POST)\n    The mean and the count of some numbers (0 for none).\n\n    Each number counts once.\n" \
           "    data:    [number]\n    returns: {string: number}\n" in text
    assert "\nnorm  (POST)\n    A point as a pair; none is the origin.\n" \
           "    data:    {x: integer, y: number} | null\n    returns: [number]" in text
    assert "\nlabel  (POST)\n    A numbered label.\n    data:    [integer, string]\n    returns: object" in text
    assert "\nmode  (GET, POST)\n" in text and 'data:    "fast" | "slow" | null' in text
    assert "\necho  (POST)\n    Anything back.\n    data:    any\n    returns: any" in text
    as_json = sf("describe", "Typed", "--json")
    assert json.loads(as_json.stdout)["paths"]["/mean"]["post"]["operationId"] == "mean"


def test_describe_of_a_service_that_is_not_running_is_one_line_and_exit_3(sf):
    result = sf("describe", "Nobody")
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


@pytest.mark.timeout(240)
def test_schemathesis_finds_no_failure_fuzzing_a_live_service_against_its_own_document(tmp_path):
    """Every check schemathesis has (server errors, status codes, content types, schemas of the
    answers, negative data rejected, valid data accepted, auth not ignored, methods), its coverage
    and fuzzing phases, against a live service that requires a token."""
    schemathesis = Path(sys.executable).parent / "schemathesis"
    if not schemathesis.exists():
        schemathesis = Path(shutil.which("schemathesis") or "schemathesis")

    @Service.API.endpoint(port=0, require_token=True, name="TypedGuarded")
    class Guarded(Typed):
        pass

    with running(Guarded(), token=TOKEN) as service:
        port = service.address[1]
        result = subprocess.run(
            [str(schemathesis), "run", f"http://127.0.0.1:{port}/openapi.json", "-H", f"Authorization: Bearer {TOKEN}",
             "--exclude-path", "/shutdown", "--checks", "all", "--max-examples", "15", "--seed", "14",
             "--phases", "coverage,fuzzing", "--report-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=200, cwd=tmp_path)
        still_running = client.perform("TypedGuarded", "health", token=TOKEN)["state"]
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "No issues found" in output, output[-6000:]
    assert "Tested: 13" in output, output[-3000:]
    assert still_running == "running"
