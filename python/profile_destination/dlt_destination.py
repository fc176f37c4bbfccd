"""A dlt destination (reverse ETL) over a profile-destination component.

dlt hands the sink batches of profiles; the component plans each batch,
the sink sends the requests in order (so each key's updates stay in
order), adding the `Authorization` header itself — the component never
sees a credential — and has every response classified:

- delivered: on to the next request;
- retry: wait until the time the component names (else back off), send
  again; retries exhausted raise `DestinationTransientException`, so dlt
  keeps the batch for the next `pipeline.load()`;
- refresh-credentials: the `Credentials` refresh, once, then resend;
- rejected, and records the component refused: dead letters, with code and
  reason, handed to `on_dead_letter` (write them back as a dlt table);
- fatal: `DestinationTerminalException`, the load stops;
- continue (contract 0.3, e.g. matching prospects by email): the answer
  moved the delivery on, send the next step; what the component asks to
  remember (which prospect an email belongs to) goes into `facts`, and a
  request whose `recall` names a remembered fact is sent as the
  component's `recall` makes it (one update instead of a lookup). `facts`
  is any mutable mapping: a dict lasts the process, a `shelve` survives
  it.

Requests are paced under the component's declared budget and the API's
`X-RateLimit-Remaining` (as the component reads it from each answer).

    sink = component_destination(component, config, api_base, credentials)
    pipeline = dlt.pipeline("to_outreach", destination=sink)
    pipeline.run(profiles, table_name="profiles")
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, MutableMapping, Optional, Protocol

import dlt
import requests
from dlt.common.destination.exceptions import (
    DestinationTerminalException,
    DestinationTransientException,
)

from . import (
    Classification,
    Component,
    Continue,
    Delivered,
    Destination,
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


# The contract's bound on recalls before one send, and the steps one
# delivery may take before its record is dead-lettered (as the reference
# host does).
MAX_RECALLS = 8
MAX_STEPS = 16


class Credentials(Protocol):
    """Where the sink's access token comes from."""

    def token(self) -> str: ...

    def refresh(self, rejected: str) -> None:
        """The API refused `rejected`: get a new token (once)."""


@dataclass
class StaticToken:
    """One fixed access token (a refresh cannot help)."""

    value: str

    def token(self) -> str:
        return self.value

    def refresh(self, rejected: str) -> None:
        raise DestinationTerminalException("the access token was refused and cannot be refreshed")


@dataclass
class Counts:
    """What the sink did, for the caller's summary."""

    received: int = 0
    delivered: int = 0
    skipped: int = 0
    dead_letters: int = 0
    requests: int = 0
    # Of the requests, the steps a delivery took before its update (0.3).
    lookups: int = 0
    creates: int = 0
    rate_limited: int = 0
    retries: int = 0


class Pacer:
    """At most the declared budget per window (from the first request of
    a window), and nothing once the API says its window is spent, until
    its reset."""

    def __init__(self, requests_per_window: int, window_seconds: int, clock: Callable[[], float]):
        self.budget = max(requests_per_window, 1)
        self.window = float(window_seconds)
        self.clock = clock
        self.window_start = 0.0
        self.used = 0
        self.blocked_until = 0.0

    def wait(self) -> None:
        now = self.clock()
        if now >= self.window_start + self.window:
            self.window_start, self.used = now, 0
        start = now
        if self.used >= self.budget:
            start = self.window_start + self.window
        start = max(start, self.blocked_until)
        if start > now:
            time.sleep(start - now)
            if start >= self.window_start + self.window:
                self.window_start, self.used = start, 0
        self.used += 1

    def observe(self, remaining: Optional[int], reset_at_ms: Optional[int]) -> None:
        if remaining == 0 and reset_at_ms is not None:
            self.blocked_until = max(self.blocked_until, reset_at_ms / 1000)


class Sender:
    """Sends a destination's requests and acts on their classification."""

    def __init__(
        self,
        destination: Destination,
        api_base: str,
        credentials: Credentials,
        pacer: Pacer,
        on_dead_letter: Callable[[dict[str, Any]], None],
        max_attempts: int = 6,
        backoff_seconds: float = 0.5,
        timeout_seconds: float = 30,
        facts: Optional[MutableMapping[str, str]] = None,
    ):
        self.destination = destination
        self.api_base = api_base.rstrip("/")
        self.credentials = credentials
        self.pacer = pacer
        self.on_dead_letter = on_dead_letter
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        self.session = requests.Session()
        self.counts = Counts()
        self.facts: MutableMapping[str, str] = {} if facts is None else facts

    def send_batch(self, records: list[str]) -> None:
        self.counts.received += len(records)
        for record, outcome in zip(records, self.destination.plan(records)):
            if isinstance(outcome, Skip):
                self.counts.skipped += 1
            elif isinstance(outcome, Invalid):
                if outcome.fate == "skipped":
                    self.counts.skipped += 1
                self.dead_letter(record, outcome.code, outcome.message)
            elif isinstance(outcome, Send):
                rejected = False
                for request in outcome.requests:
                    rejected |= not self.deliver(record, request)
                if not rejected:
                    self.counts.delivered += 1

    def dead_letter(self, record: str, code: str, reason: str, status: Optional[int] = None) -> None:
        self.counts.dead_letters += 1
        self.on_dead_letter({"record": record, "code": code, "reason": reason, "status": status})

    def recalled(self, request: Request) -> Request:
        """`request`, or what the component makes of it once the fact it
        recalls is known (as long as the answer recalls another known one,
        at most MAX_RECALLS times)."""
        for _ in range(MAX_RECALLS):
            value = None if request.recall is None else self.facts.get(request.recall)
            if value is None:
                break
            request = self.destination.recall(request, value)
        return request

    def learn(self, classification: Classification) -> None:
        for name in classification.forget:
            self.facts.pop(name, None)
        for fact in classification.remember:
            self.facts[fact.name] = fact.value

    def deliver(self, record: str, request: Request) -> bool:
        """Sends `request`, and the steps it leads to, until the delivery
        has a verdict: True when delivered."""
        refreshed = False
        attempt = 0
        steps = 0
        while True:
            attempt += 1
            if attempt > self.max_attempts:
                raise DestinationTransientException(
                    f"{request.method.upper()} {request.path}: no verdict after {self.max_attempts} attempts"
                )
            token = self.credentials.token()
            sent = self.recalled(request)
            self.pacer.wait()
            self.counts.requests += 1
            if sent.purpose == "lookup":
                self.counts.lookups += 1
            elif sent.purpose == "create":
                self.counts.creates += 1
            try:
                answer = self.session.request(
                    sent.method.upper(),
                    self.api_base + sent.path,
                    headers={
                        **{h.name: h.value for h in sent.headers},
                        "Authorization": f"Bearer {token}",
                    },
                    data=sent.body.encode("utf-8"),
                    timeout=self.timeout_seconds,
                )
            except requests.RequestException as e:
                self.wait_to_retry(attempt, None, f"transport: {type(e).__name__}")
                continue
            response = Response(
                status=answer.status_code,
                headers=[Header(n, v) for n, v in answer.headers.items()],
                body=answer.content.decode("utf-8", "replace"),
            )
            classification = self.destination.classify(sent, response, int(time.time() * 1000))
            self.pacer.observe(classification.budget.remaining, classification.budget.reset_at_ms)
            self.learn(classification)
            verdict = classification.verdict
            if isinstance(verdict, Delivered):
                return True
            if isinstance(verdict, Continue):
                steps += 1
                if steps >= MAX_STEPS:
                    self.dead_letter(
                        record,
                        "too-many-steps",
                        f"the delivery took {MAX_STEPS} steps without an end; the last request was "
                        f"{sent.method.upper()} {sent.path}",
                        answer.status_code,
                    )
                    return False
                # A new request: its own attempts and refresh.
                request, attempt, refreshed = verdict.request, 0, False
                continue
            if isinstance(verdict, Rejected):
                self.dead_letter(record, verdict.code, verdict.message, answer.status_code)
                return False
            if isinstance(verdict, Fatal):
                raise DestinationTerminalException(verdict.message)
            if isinstance(verdict, RefreshCredentials):
                if refreshed:
                    raise DestinationTerminalException("the refreshed credentials were refused too")
                self.credentials.refresh(token)
                refreshed = True
                continue
            assert isinstance(verdict, Retry)
            if answer.status_code == 429:
                self.counts.rate_limited += 1
                self.pacer.observe(0, verdict.not_before_ms)
            self.wait_to_retry(attempt, verdict.not_before_ms, verdict.reason)

    def wait_to_retry(self, attempt: int, not_before_ms: Optional[int], reason: str) -> None:
        if attempt >= self.max_attempts:
            return
        self.counts.retries += 1
        if not_before_ms is not None:
            delay = not_before_ms / 1000 - time.time()
        else:
            delay = self.backoff_seconds * 2 ** (attempt - 1)
        time.sleep(max(0.0, min(delay, 3_600)))


def component_destination(
    component: Component,
    config: str | dict[str, Any],
    api_base: Optional[str],
    credentials: Credentials,
    on_dead_letter: Callable[[dict[str, Any]], None],
    batch_size: int = 500,
    name: str = "profile_destination",
    **sender_options: Any,
) -> Any:
    """A dlt destination that delivers each profile through `component`
    (configured with `config`) to `api_base` (default: the component's)."""
    destination = component.create(config)
    described = component.describe()
    pacer = Pacer(
        described.rate_limit.requests, described.rate_limit.window_seconds, time.time
    )
    sender = Sender(
        destination,
        api_base or described.default_api_base,
        credentials,
        pacer,
        on_dead_letter,
        **sender_options,
    )

    def deliver(items: Any, table: Any) -> None:
        sender.send_batch([json.dumps(item, default=str) for item in items])

    sink = dlt.destination(
        deliver,
        batch_size=batch_size,
        name=name,
        naming_convention="direct",
        max_table_nesting=0,
        skip_dlt_columns_and_tables=True,
        loader_parallelism_strategy="sequential",
    )
    factory = sink()
    factory.sender = sender  # type: ignore[attr-defined]
    return factory


def ndjson_profiles(path: str, sink: Any):
    """The profiles of an NDJSON file, as dicts for dlt; a line that is not
    a JSON object cannot travel through dlt, so it is planned (and
    dead-lettered, as the component says) by the sink at once."""
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            line = line.rstrip("\n")
            try:
                profile = json.loads(line)
            except ValueError:
                profile = None
            if isinstance(profile, dict):
                yield profile
            else:
                sink.sender.send_batch([line])
