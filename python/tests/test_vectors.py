"""The golden vectors of tests/vectors, run against the component through
the Python package: a third host beside wasmtime-rs (tests/src) and
Node.js (tests/node), the same cases compared the same way.

The component is the one `cargo test` builds; OUTREACH_COMPONENT points
elsewhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from profile_destination import (
    Component,
    ConfigError,
    Continue,
    Delivered,
    Fatal,
    Header,
    Invalid,
    RefreshCredentials,
    Rejected,
    Request,
    Response,
    Retry,
    Send,
    Skip,
)

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"
WASM = Path(
    os.environ.get(
        "OUTREACH_COMPONENT",
        ROOT / "target" / "guest" / "wasm32-wasip2" / "component" / "outreach_guest.wasm",
    )
)
SUBJECTS = ("config", "plan", "classify", "merge", "steps")
JSON_API_HEADERS = [
    {"name": "Content-Type", "value": "application/vnd.api+json"},
    {"name": "Accept", "value": "application/vnd.api+json"},
]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def build_parts(parts: list[Any]) -> str:
    return "".join(p if isinstance(p, str) else p["repeat"] * p["times"] for p in parts)


def text_of(holder: dict[str, Any], name: str) -> str | None:
    if f"{name}_text" in holder:
        return holder[f"{name}_text"]
    if f"{name}_parts" in holder:
        return build_parts(holder[f"{name}_parts"])
    if name in holder:
        return json.dumps(holder[name])
    return None


def config_text(holder: dict[str, Any]) -> str | None:
    if "config_file" in holder:
        return (VECTORS / holder["config_file"]).read_text(encoding="utf-8")
    return text_of(holder, "config")


def vector_files(subject: str) -> list[Path]:
    return sorted((VECTORS / subject).glob("*.json"))


# Every case the runner collects, as (subject, file, case): a vector
# skipped by a loader fails `test_every_case_on_disk_ran`.
CASES = [
    (subject, path, case)
    for subject in SUBJECTS
    for path in vector_files(subject)
    for case in read_json(path)["cases"]
]


@pytest.fixture(scope="module")
def component() -> Component:
    if not WASM.exists():
        pytest.fail(f"{WASM} not found: run `cargo build` (or `cargo test`) first")
    return Component.load(WASM)


def test_every_case_on_disk_ran() -> None:
    # Every vector file anywhere under tests/vectors, whatever its subject:
    # a subject or file this runner does not collect fails here.
    on_disk = 0
    for path in VECTORS.rglob("*.json"):
        vector = read_json(path)
        if isinstance(vector, dict) and "cases" in vector:
            on_disk += len(vector["cases"])
    assert on_disk > 0
    assert len(CASES) == on_disk


def test_describe(component: Component) -> None:
    expected = read_json(VECTORS / "describe.json")["expect"]
    d = component.describe()
    assert d.config_schema["type"] == "object"
    assert {
        "name": d.name,
        "default-api-base": d.default_api_base,
        "oauth": {
            "authorize-url": d.oauth.authorize_url,
            "token-url": d.oauth.token_url,
            "scopes": d.oauth.scopes,
            "min-seconds-between-tokens": d.oauth.min_seconds_between_tokens,
            "client-authentication": d.oauth.client_authentication,
        },
        "rate-limit": {
            "requests": d.rate_limit.requests,
            "window-seconds": d.rate_limit.window_seconds,
            "per": d.rate_limit.per,
        },
    } == expected


def case_id(case: tuple[str, Path, dict[str, Any]]) -> str:
    subject, path, c = case
    return f"{subject}/{path.name}: {c['name']}"


def comparable_outcome(outcome: Any, expected: dict[str, Any]) -> dict[str, Any]:
    if isinstance(outcome, Skip):
        return {"skip": outcome.reason}
    if isinstance(outcome, Invalid):
        return {
            "invalid": {
                "code": outcome.code,
                "fate": outcome.fate,
                "message": outcome.message,
                "audiences": outcome.audiences,
            }
        }
    assert isinstance(outcome, Send)
    requests = []
    for i, r in enumerate(outcome.requests):
        request: dict[str, Any] = {
            "method": r.method.upper(),
            "path": r.path,
            "headers": [{"name": h.name, "value": h.value} for h in r.headers],
            "body": json.loads(r.body),
            "key": r.key,
            "audiences": r.audiences,
        }
        sent = expected.get("send") or []
        expected_request = sent[i] if i < len(sent) else {}
        if "headers" not in expected_request:
            assert request["headers"] == JSON_API_HEADERS
            del request["headers"]
        assert not any(h.name.lower() == "authorization" for h in r.headers)
        requests.append(request)
    return {"send": requests}


def normalised(expect: dict[str, Any]) -> dict[str, Any]:
    copy = json.loads(json.dumps(expect))
    for request in copy.get("send") or []:
        if "body_parts" in request:
            request["body"] = json.loads(build_parts(request.pop("body_parts")))
    return copy


@pytest.fixture(scope="module")
def plans(component: Component) -> dict[tuple[str, str], Any]:
    """Each plan vector's cases planned as one batch per configuration, as
    a host does: (file, case name) → outcome."""
    planned: dict[tuple[str, str], Any] = {}
    for path in vector_files("plan"):
        vector = read_json(path)
        batches: dict[str, list[dict[str, Any]]] = {}
        for c in vector["cases"]:
            config = config_text(c) or config_text(vector)
            assert config is not None
            batches.setdefault(config, []).append(c)
        for config, cases in batches.items():
            destination = component.create(config)
            outcomes = destination.plan([text_of(c, "record") or "" for c in cases])
            assert len(outcomes) == len(cases)
            for c, outcome in zip(cases, outcomes):
                planned[(path.name, c["name"])] = outcome
    return planned


def wit_request(r: dict[str, Any]) -> Request:
    return Request(
        method=r["method"].lower(),
        path=r["path"],
        headers=[Header(h["name"], h["value"]) for h in r.get("headers", [])],
        body=r["body"],
        key=r["key"],
        audiences=list(r.get("audiences", [])),
        purpose=r.get("purpose", "update"),
        recall=r.get("recall"),
        context=r.get("context", ""),
    )


def vector_request(r: Request) -> dict[str, Any]:
    """A request in the vectors' form: the fields since 0.3 only where they
    do not hold their defaults (as serde writes them)."""
    request: dict[str, Any] = {
        "method": r.method.upper(),
        "path": r.path,
        "headers": [{"name": h.name, "value": h.value} for h in r.headers],
        "body": r.body,
        "key": r.key,
        "audiences": r.audiences,
    }
    if r.purpose != "update":
        request["purpose"] = r.purpose
    if r.recall is not None:
        request["recall"] = r.recall
    if r.context != "":
        request["context"] = r.context
    return request


def step_json(r: Request) -> dict[str, Any]:
    """The steps vectors' form: body and context parsed when not empty."""
    request = vector_request(r)
    for name in ("body", "context"):
        if isinstance(request.get(name), str) and request[name] != "":
            request[name] = json.loads(request[name])
    return request


def step_request(v: dict[str, Any]) -> Request:
    request = dict(v)
    for name in ("body", "context"):
        if name in request and not isinstance(request[name], str):
            request[name] = json.dumps(request[name])
    return wit_request(request)


def comparable_classification(c: Any, expect: dict[str, Any]) -> dict[str, Any]:
    actual: dict[str, Any] = {"verdict": comparable_verdict(c.verdict)}
    if "budget" in expect:
        b = c.budget
        actual["budget"] = {"limit": b.limit, "remaining": b.remaining, "reset-at-ms": b.reset_at_ms}
    if c.remember:
        actual["remember"] = [{"name": f.name, "value": f.value} for f in c.remember]
    if c.forget:
        actual["forget"] = list(c.forget)
    return actual


def wit_response(r: dict[str, Any]) -> Response:
    body = r.get("body")
    if body is None:
        body = ""
    elif not isinstance(body, str):
        body = json.dumps(body)
    return Response(
        status=r["status"],
        headers=[Header(h["name"], h["value"]) for h in r.get("headers", [])],
        body=body,
    )


def comparable_verdict(v: Any) -> Any:
    if isinstance(v, Delivered):
        return "delivered"
    if isinstance(v, RefreshCredentials):
        return "refresh-credentials"
    if isinstance(v, Retry):
        return {"retry": {"not-before-ms": v.not_before_ms, "reason": v.reason}}
    if isinstance(v, Rejected):
        return {"rejected": {"code": v.code, "message": v.message, "audience": v.audience}}
    if isinstance(v, Continue):
        return {"continue": step_json(v.request)}
    assert isinstance(v, Fatal)
    return {"fatal": v.message}


def merge_request(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    request = dict(base)
    for name, value in overrides.items():
        if name == "body":
            request["body"] = json.dumps(value)
        elif name == "body_text":
            request["body"] = value
        else:
            request[name] = value
    return request


def comparable_request(r: dict[str, Any]) -> dict[str, Any]:
    try:
        body = json.loads(r["body"])
    except ValueError:
        body = r["body"]
    return {**r, "method": r["method"].upper(), "body": body}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_vector(
    case: tuple[str, Path, dict[str, Any]],
    component: Component,
    plans: dict[tuple[str, str], Any],
) -> None:
    subject, path, c = case
    vector = read_json(path)
    if subject == "config":
        try:
            component.create(config_text(c) or "")
            actual: Any = {"ok": True}
        except ConfigError as e:
            actual = {"errors": [{"setting": p.setting, "message": p.message} for p in e.problems]}
        assert actual == c["expect"]
    elif subject == "plan":
        expected = normalised(c["expect"])
        assert comparable_outcome(plans[(path.name, c["name"])], expected) == expected
    elif subject == "classify":
        destination = component.create(config_text(vector) or "")
        classification = destination.classify(
            wit_request(c.get("request") or vector["request"]),
            wit_response(c["response"]),
            int(vector["now_ms"]),
        )
        assert comparable_classification(classification, c["expect"]) == c["expect"]
    elif subject == "steps":
        run_steps_case(component, vector, c)
    else:
        destination = component.create(config_text(vector) or "")
        older = merge_request(vector["request"], c["older"])
        newer = merge_request(vector["request"], c["newer"])
        merged = destination.merge(wit_request(older), wit_request(newer))
        expected_merge = (
            None if c["expect"]["merged"] is None else comparable_request(merge_request(newer, c["expect"]["merged"]))
        )
        actual = None if merged is None else comparable_request(vector_request(merged))
        assert actual == expected_merge


def run_steps_case(component: Component, vector: dict[str, Any], c: dict[str, Any]) -> None:
    """A case of deliveries of several steps (contract 0.3): plan, recall,
    classify, merge, or a configuration."""
    config = config_text(c) or config_text(vector) or ""
    if not any(name in c for name in ("record", "recall", "response", "older")):
        try:
            component.create(config)
            actual: Any = {"ok": True}
        except ConfigError as e:
            actual = {"errors": [{"setting": p.setting, "message": p.message} for p in e.problems]}
        assert actual == c["expect"]
        return
    destination = component.create(config)
    if "record" in c:
        (outcome,) = destination.plan([text_of(c, "record") or ""])
        if isinstance(outcome, Send):
            actual = {"send": [step_json(r) for r in outcome.requests]}
        else:
            actual = comparable_outcome(outcome, c["expect"])
    elif "recall" in c:
        actual = step_json(destination.recall(step_request(c["recall"]["request"]), c["recall"]["value"]))
    elif "response" in c:
        classification = destination.classify(
            step_request(c["request"]), wit_response(c["response"]), int(vector["now_ms"])
        )
        actual = comparable_classification(classification, c["expect"])
    else:
        merged = destination.merge(step_request(c["older"]), step_request(c["newer"]))
        actual = None if merged is None else step_json(merged)
    assert actual == c["expect"]


def test_the_pinned_wasmtime_py_lifts_values_through_the_speedups(component: Component) -> None:
    import profile_destination

    assert profile_destination.SPEEDUPS
    # Strings of any script and length survive the faster reading.
    destination = component.create(config_text(read_json(VECTORS / "plan" / "attributes.json")) or "")
    titles = ["a", "Kraków – 東京 – 🚀", "é" * 200]
    records = [
        json.dumps({"identityMap": {"Oid": [{"id": str(7 + i)}]}, "person": {"jobTitle": title}})
        for i, title in enumerate(titles)
    ]
    for title, outcome in zip(titles, destination.plan(records)):
        assert isinstance(outcome, Send), outcome
        assert json.loads(outcome.requests[0].body)["data"]["attributes"]["title"] == title
