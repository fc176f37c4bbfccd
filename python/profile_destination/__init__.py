"""A profile-destination component (`profile-sync:destination@0.3.0`, or
a 0.2.0 one) in Python, through wasmtime-py.

The component holds all knowledge of the destination's API; this package
only loads it and converts values: records in, tagged outcomes out. It
adds nothing about any one API.

    component = Component.load("outreach_guest.wasm")
    destination = component.create(config_json)     # ConfigError lists every problem
    for outcome in destination.plan(records):        # Send / Skip / Invalid
        ...
    verdict = destination.classify(request, response, now_ms).verdict
    # 0.3: Continue(next) is the delivery's next step; remember what the
    # classification's `remember` lists, and before sending a request whose
    # `recall` names a remembered fact, send destination.recall(request, value).

wasmtime-py's dynamic component API returns a variant whose cases carry
payloads of distinct Python types untagged (a plan outcome is a list, a
str or a record), and keeps kebab-case field names; both are hidden here.
A `Store` is not thread-safe: use one `Component` per thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import wasmtime
import wasmtime.component as wc

from . import _speedups

SPEEDUPS = _speedups.apply()

INTERFACE = "profile-sync:destination/destination@0.3.0"
# Earlier contracts this package still runs, newest first: 0.2 has no
# deliveries of several steps (no purpose, recall or context on a request,
# no `continue`, nothing to remember, no `recall`).
EARLIER_INTERFACES = ("profile-sync:destination/destination@0.2.0",)

__all__ = [
    "AudienceLabel",
    "Budget",
    "Classification",
    "Component",
    "ConfigError",
    "ConfigProblem",
    "Delivered",
    "Descriptor",
    "Destination",
    "Continue",
    "Fact",
    "Fatal",
    "Header",
    "Identity",
    "Invalid",
    "OAuthDescriptor",
    "Outcome",
    "RateLimitPolicy",
    "RefreshCredentials",
    "Rejected",
    "Request",
    "Response",
    "Retry",
    "Send",
    "Skip",
    "Verdict",
]


@dataclass(frozen=True)
class Header:
    name: str
    value: str


@dataclass(frozen=True)
class Request:
    """A request the host sends for the destination (never with credentials:
    the host adds them)."""

    method: str  # "get", "post", "put" or "patch"
    path: str
    headers: list[Header]
    body: str
    key: str
    audiences: list[str]
    # Since 0.3: what the request does ("update", "lookup" or "create"),
    # the remembered fact it depends on, and what the component carries to
    # the delivery's next step (opaque to the host).
    purpose: str = "update"
    recall: Optional[str] = None
    context: str = ""


@dataclass(frozen=True)
class Response:
    status: int
    headers: list[Header] = field(default_factory=list)
    body: str = ""


@dataclass(frozen=True)
class Send:
    """Send these requests, in order."""

    requests: list[Request]


@dataclass(frozen=True)
class Skip:
    """Nothing to write for the record."""

    reason: str


@dataclass(frozen=True)
class Invalid:
    """The record cannot be sent; `fate` is "skipped" or "rejected"."""

    code: str
    message: str
    fate: str
    audiences: list[str]


Outcome = Union[Send, Skip, Invalid]


@dataclass(frozen=True)
class Delivered:
    pass


@dataclass(frozen=True)
class Retry:
    """Send the same request again, not before `not_before_ms` (epoch ms)
    when the API said."""

    not_before_ms: Optional[int]
    reason: str


@dataclass(frozen=True)
class RefreshCredentials:
    pass


@dataclass(frozen=True)
class Rejected:
    code: str
    message: str
    audience: Optional[str]


@dataclass(frozen=True)
class Fatal:
    message: str


@dataclass(frozen=True)
class Continue:
    """The delivery moved on: send `request` next, in place of the one
    answered, before any later update of its key (0.3)."""

    request: Request


Verdict = Union[Delivered, Retry, RefreshCredentials, Rejected, Fatal, Continue]


@dataclass(frozen=True)
class Fact:
    """Something the component asks the host to remember (0.3)."""

    name: str
    value: str


@dataclass(frozen=True)
class Budget:
    limit: Optional[int]
    remaining: Optional[int]
    reset_at_ms: Optional[int]


@dataclass(frozen=True)
class Classification:
    verdict: Verdict
    budget: Budget
    remember: list[Fact] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OAuthDescriptor:
    authorize_url: str
    token_url: str
    scopes: list[str]
    min_seconds_between_tokens: int
    client_authentication: str


@dataclass(frozen=True)
class RateLimitPolicy:
    requests: int
    window_seconds: int
    per: str


@dataclass(frozen=True)
class Descriptor:
    name: str
    version: str
    default_api_base: str
    oauth: OAuthDescriptor
    rate_limit: RateLimitPolicy
    config_schema: dict[str, Any]


@dataclass(frozen=True)
class AudienceLabel:
    id: str
    label: str


@dataclass(frozen=True)
class Identity:
    name: str
    account: Optional[str]
    audiences: list[AudienceLabel]
    # The OAuth scopes the configuration needs (0.3; empty: describe's).
    scopes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ConfigProblem:
    setting: str
    message: str


class ConfigError(ValueError):
    """The configuration was refused; `problems` lists every one."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = problems
        lines = "\n".join(f"  {p.setting}: {p.message}" for p in problems)
        super().__init__(f"the configuration has {len(problems)} problem(s):\n{lines}")


def _get(record: Any, name: str) -> Any:
    return getattr(record, name)


def _header(record: Any) -> Header:
    return Header(_get(record, "name"), _get(record, "value"))


def _request(record: Any) -> Request:
    return Request(
        method=_get(record, "method"),
        path=_get(record, "path"),
        headers=[_header(h) for h in _get(record, "headers")],
        body=_get(record, "body"),
        key=_get(record, "key"),
        audiences=list(_get(record, "audiences")),
        purpose=getattr(record, "purpose", "update"),
        recall=getattr(record, "recall", None),
        context=getattr(record, "context", ""),
    )


def _record(**fields: Any) -> wc.Record:
    record = wc.Record()
    for name, value in fields.items():
        setattr(record, name.replace("_", "-"), value)
    return record


def _wit_headers(headers: Sequence[Header]) -> list[wc.Record]:
    return [_record(name=h.name, value=h.value) for h in headers]


def _wit_request(request: Request, steps: bool) -> wc.Record:
    record = _record(
        method=request.method,
        path=request.path,
        headers=_wit_headers(request.headers),
        body=request.body,
        key=request.key,
        audiences=list(request.audiences),
    )
    if steps:
        setattr(record, "purpose", request.purpose)
        setattr(record, "recall", request.recall)
        setattr(record, "context", request.context)
    return record


def _outcome(value: Any) -> Outcome:
    # Untagged by wasmtime-py: send is a list, skip a str, invalid a record.
    if isinstance(value, list):
        return Send([_request(r) for r in value])
    if isinstance(value, str):
        return Skip(value)
    return Invalid(
        code=_get(value, "code"),
        message=_get(value, "message"),
        fate=_get(value, "fate"),
        audiences=list(_get(value, "audiences")),
    )


def _verdict(value: Any) -> Verdict:
    tag, payload = value.tag, value.payload
    if tag == "delivered":
        return Delivered()
    if tag == "retry":
        return Retry(_get(payload, "not-before-ms"), _get(payload, "reason"))
    if tag == "refresh-credentials":
        return RefreshCredentials()
    if tag == "rejected":
        return Rejected(_get(payload, "code"), _get(payload, "message"), _get(payload, "audience"))
    if tag == "fatal":
        return Fatal(payload)
    if tag == "continue":
        return Continue(_request(payload))
    raise ValueError(f"unknown verdict {tag!r}")


class Component:
    """A loaded component and one instance of it (one store: use it from
    one thread)."""

    def __init__(self, engine: wasmtime.Engine, component: wc.Component):
        self._store = wasmtime.Store(engine)
        # The component imports nothing: an empty linker instantiates it.
        self._instance = wc.Linker(engine).instantiate(self._store, component)
        for name in (INTERFACE, *EARLIER_INTERFACES):
            interface = self._instance.get_export_index(self._store, name)
            if interface is not None:
                break
        else:
            raise ValueError(
                f"the component exports none of {', '.join((INTERFACE, *EARLIER_INTERFACES))}"
            )
        self.interface = name
        # Whether a delivery may take several steps (contract 0.3).
        self.takes_steps = name == INTERFACE
        self._interface = interface
        self._describe = self._func("describe")
        self._create = self._func("[static]configured.create")
        self._plan = self._func("[method]configured.plan")
        self._classify = self._func("[method]configured.classify")
        self._merge = self._func("[method]configured.merge")
        self._identity = self._func("[method]configured.identity")
        self._recall = self._func("[method]configured.recall") if self.takes_steps else None

    @classmethod
    def load(cls, path: Union[str, Path], engine: Optional[wasmtime.Engine] = None) -> "Component":
        engine = engine or wasmtime.Engine()
        return cls(engine, wc.Component.from_file(engine, str(path)))

    def _func(self, name: str) -> wc.Func:
        index = self._instance.get_export_index(self._store, name, self._interface)
        if index is None:
            raise ValueError(f"the component's {self.interface} has no {name}")
        func = self._instance.get_func(self._store, index)
        if func is None:
            raise ValueError(f"{name} is not a function")
        return func

    def _call(self, func: wc.Func, *args: Any) -> Any:
        return func(self._store, *args)

    def describe(self) -> Descriptor:
        d = self._call(self._describe)
        oauth = _get(d, "oauth")
        rate = _get(d, "rate-limit")
        return Descriptor(
            name=_get(d, "name"),
            version=_get(d, "version"),
            default_api_base=_get(d, "default-api-base"),
            oauth=OAuthDescriptor(
                authorize_url=_get(oauth, "authorize-url"),
                token_url=_get(oauth, "token-url"),
                scopes=list(_get(oauth, "scopes")),
                min_seconds_between_tokens=_get(oauth, "min-seconds-between-tokens"),
                client_authentication=_get(oauth, "client-authentication"),
            ),
            rate_limit=RateLimitPolicy(
                requests=_get(rate, "requests"),
                window_seconds=_get(rate, "window-seconds"),
                per=_get(rate, "per"),
            ),
            config_schema=json.loads(_get(d, "config-schema")),
        )

    def create(self, config: Union[str, dict[str, Any]]) -> "Destination":
        """A configured destination; `ConfigError` lists every problem."""
        text = config if isinstance(config, str) else json.dumps(config)
        result = self._call(self._create, text)
        # Untagged by wasmtime-py: the resource handle, or the error list.
        if isinstance(result, list):
            raise ConfigError(
                [ConfigProblem(_get(e, "setting"), _get(e, "message")) for e in result]
            )
        return Destination(self, result)


class Destination:
    """A configuration the component accepted."""

    def __init__(self, component: Component, handle: wc.ResourceAny):
        self._component = component
        self._handle = handle

    def plan(self, records: Sequence[str]) -> list[Outcome]:
        """One outcome per record (each JSON text), in order."""
        outcomes = self._component._call(self._component._plan, self._handle, list(records))
        return [_outcome(o) for o in outcomes]

    def classify(self, request: Request, response: Response, now_ms: int) -> Classification:
        wit_response = _record(
            status=response.status, headers=_wit_headers(response.headers), body=response.body
        )
        steps = self._component.takes_steps
        c = self._component._call(
            self._component._classify, self._handle, _wit_request(request, steps), wit_response, now_ms
        )
        budget = _get(c, "budget")
        return Classification(
            verdict=_verdict(_get(c, "verdict")),
            budget=Budget(
                limit=_get(budget, "limit"),
                remaining=_get(budget, "remaining"),
                reset_at_ms=_get(budget, "reset-at-ms"),
            ),
            remember=[Fact(_get(f, "name"), _get(f, "value")) for f in getattr(c, "remember", [])],
            forget=list(getattr(c, "forget", [])),
        )

    def merge(self, older: Request, newer: Request) -> Optional[Request]:
        """One request with the effect of both, or None (send both)."""
        steps = self._component.takes_steps
        merged = self._component._call(
            self._component._merge,
            self._handle,
            _wit_request(older, steps),
            _wit_request(newer, steps),
        )
        return None if merged is None else _request(merged)

    def recall(self, request: Request, value: str) -> Request:
        """The request to send instead of `request`, whose `recall` names a
        fact remembered as `value` (0.2 components recall nothing)."""
        if self._component._recall is None:
            return request
        recalled = self._component._call(
            self._component._recall, self._handle, _wit_request(request, True), value
        )
        return _request(recalled)

    def identity(self) -> Identity:
        i = self._component._call(self._component._identity, self._handle)
        return Identity(
            name=_get(i, "name"),
            account=_get(i, "account"),
            audiences=[AudienceLabel(_get(a, "id"), _get(a, "label")) for a in _get(i, "audiences")],
            scopes=list(getattr(i, "scopes", [])),
        )
