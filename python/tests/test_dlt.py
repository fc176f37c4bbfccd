"""The dlt destination against the project's simulator (`outreach-host
simulate`, started here): the example profiles loaded through dlt leave
the simulator exactly as `outreach-host run` leaves a fresh one; an
outage mid-load, then `pipeline.load()`, ends the same with no delivered
batch sent again; a 429 is waited out; bad records land in a dead-letter
table.
"""

from __future__ import annotations

import collections
import gzip
import http.server
import json
import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import dlt
import pytest
import requests
from dlt.pipeline.exceptions import PipelineStepFailed

from profile_destination import Component
from profile_destination.dlt_destination import StaticToken, component_destination, ndjson_profiles

ROOT = Path(__file__).resolve().parents[2]
HOST = ROOT / "target" / "debug" / "outreach-host"
WASM = ROOT / "target" / "guest" / "wasm32-wasip2" / "component" / "outreach_guest.wasm"
CONFIG = (ROOT / "examples" / "destination.json").read_text(encoding="utf-8")
PROFILES = ROOT / "examples" / "profiles.ndjson"

os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")


class Simulator:
    def __init__(self, *args: str):
        if not HOST.exists():
            pytest.fail(f"{HOST} not found: run `cargo build` (or `cargo test`) first")
        self.process = subprocess.Popen(
            [str(HOST), "simulate", "--listen", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.api = self.token = ""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if m := re.search(r"simulator: (\S+)", line):
                self.api = m.group(1)
            if m := re.search(r"OUTREACH_ACCESS_TOKEN=(\S+)", line):
                self.token = m.group(1)
            if self.api and self.token:
                break
        self.origin = self.api.rsplit("/api/", 1)[0]

    def prospects(self) -> dict[int, Any]:
        """Every prospect's attributes, but when it was last written."""
        data = requests.get(f"{self.origin}/sim/prospects", timeout=10).json()["data"]
        return {
            p["id"]: {k: v for k, v in p["attributes"].items() if k != "updatedAt"} for p in data
        }

    def stats(self) -> dict[str, Any]:
        return requests.get(f"{self.origin}/sim/stats", timeout=10).json()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def component() -> Component:
    return Component.load(WASM)


def pipeline(sink: Any) -> Any:
    return dlt.pipeline(
        "profiles_to_api", destination=sink, pipelines_dir=tempfile.mkdtemp(prefix="dlt-")
    )


def dead_letter_table(letters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Writes the letters back as a dlt table (a filesystem destination,
    JSON lines) and reads the table."""
    bucket = tempfile.mkdtemp(prefix="letters-")
    dlt.pipeline(
        "dead_letters",
        destination=dlt.destinations.filesystem(bucket_url=Path(bucket).as_uri()),
        dataset_name="letters",
        pipelines_dir=tempfile.mkdtemp(prefix="dlt-"),
    ).run(
        letters,
        table_name="dead_letters",
        loader_file_format="jsonl",
        columns={"status": {"data_type": "bigint", "nullable": True}},
    )
    rows = []
    for path in Path(bucket).rglob("*.jsonl*"):
        if path.parent.name == "dead_letters":
            raw = path.read_bytes()
            text = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
            rows += [json.loads(line) for line in text.decode().splitlines() if line]
    return rows


def host_run(simulator: Simulator, journal: Path) -> list[dict[str, Any]]:
    """`outreach-host run` over the same input: its dead letters."""
    env = {**os.environ, "OUTREACH_ACCESS_TOKEN": simulator.token}
    config = journal.parent / "destination.json"
    config.write_text(CONFIG)
    subprocess.run(
        [str(HOST), "--journal", str(journal), "run", "--config", str(config),
         "--input", str(PROFILES), "--api-base", simulator.api],
        env=env, check=False, capture_output=True,
    )
    listed = subprocess.run(
        [str(HOST), "--journal", str(journal), "dead-letters", "list"],
        env=env, check=True, capture_output=True, text=True,
    )
    return [json.loads(line) for line in listed.stdout.splitlines()]


def test_a_dlt_load_leaves_the_api_as_the_host_does(component: Component, tmp_path: Path) -> None:
    through_dlt, through_host = Simulator(), Simulator()
    try:
        letters: list[dict[str, Any]] = []
        sink = component_destination(
            component, CONFIG, through_dlt.api, StaticToken(through_dlt.token), letters.append
        )
        pipeline(sink).run(ndjson_profiles(str(PROFILES), sink), table_name="profiles")
        host_letters = host_run(through_host, tmp_path / "journal.sqlite")
        assert through_dlt.prospects() == through_host.prospects()
        # Every bad record is a row of the dead-letter table, with its code
        # and reason, as the host dead-letters it.
        table = dead_letter_table(letters)
        assert sorted(r["code"] for r in table) == sorted(l["code"] for l in host_letters)
        assert all(r["reason"] for r in table)
        assert sink.sender.counts.received == 3_000
    finally:
        through_dlt.stop()
        through_host.stop()


class Gateway:
    """A loopback HTTP proxy in front of the simulator that can be taken
    down (503 to everything), and counts the writes that went through."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.down = False
        self.delivered: collections.Counter[str] = collections.Counter()
        self.before_outage: set[str] = set()
        gateway = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_PATCH(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if gateway.down:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                answer = requests.patch(
                    gateway.upstream + self.path,
                    data=body,
                    headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
                    timeout=10,
                )
                if answer.status_code == 200:
                    gateway.delivered[self.path] += 1
                self.send_response(answer.status_code)
                for name, value in answer.headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()


def test_an_outage_mid_load_then_load_again_ends_the_same_sending_no_delivered_batch_again(
    component: Component, tmp_path: Path
) -> None:
    through_dlt, through_host = Simulator(), Simulator()
    gateway = Gateway(through_dlt.origin)
    try:
        letters: list[dict[str, Any]] = []
        sink = component_destination(
            component,
            CONFIG,
            gateway.url + "/api/v2",
            StaticToken(through_dlt.token),
            letters.append,
            batch_size=100,
            max_attempts=3,
            backoff_seconds=0.05,
        )
        sent_before: list[str] = []

        def profiles() -> Iterator[dict[str, Any]]:
            yield from ndjson_profiles(str(PROFILES), sink)

        # The API goes away after 1,000 writes.
        original = sink.sender.deliver

        def deliver(record: str, request: Any) -> bool:
            if sum(gateway.delivered.values()) >= 1_000 and not gateway.before_outage:
                gateway.before_outage = set(gateway.delivered)
                sent_before.extend(gateway.delivered)
                gateway.down = True
            return original(record, request)

        sink.sender.deliver = deliver  # type: ignore[method-assign]
        loading = pipeline(sink)
        with pytest.raises(PipelineStepFailed):
            loading.run(profiles(), table_name="profiles")
        assert gateway.down and sent_before
        # The API is back: the load resumes where it stopped.
        gateway.down = False
        loading.load()
        host_run(through_host, tmp_path / "journal.sqlite")
        assert through_dlt.prospects() == through_host.prospects()
        # Writes of the batches delivered before the outage were not sent
        # again (only the batch cut off by it is).
        again = [path for path in sent_before if gateway.delivered[path] > 1]
        assert len(again) < 100, again
    finally:
        gateway.stop()
        through_dlt.stop()
        through_host.stop()


def test_a_429_is_waited_out_not_counted_as_a_failure(component: Component) -> None:
    simulator = Simulator("--rate-limit", "40", "--rate-window-secs", "2", "--fixed-window")
    try:
        letters: list[dict[str, Any]] = []
        sink = component_destination(
            component, CONFIG, simulator.api, StaticToken(simulator.token), letters.append
        )
        # Another client of the same user spends the window just before
        # the load's first request, which meets a 429 (the API's remaining
        # count paces the rest).
        original = sink.sender.deliver
        spent: list[int] = []

        def deliver(record: str, request: Any) -> bool:
            if not spent:
                for _ in range(40):
                    spent.append(
                        requests.get(
                            f"{simulator.api}/prospects/1",
                            headers={"Authorization": f"Bearer {simulator.token}"},
                            timeout=10,
                        ).status_code
                    )
            return original(record, request)

        sink.sender.deliver = deliver  # type: ignore[method-assign]
        good = [json.loads(line) for line in PROFILES.read_text().splitlines()[:200]]
        pipeline(sink).run(good, table_name="profiles")
        counts = sink.sender.counts
        assert counts.rate_limited >= 1, counts
        assert simulator.stats()["rate_limited"] >= 1
        assert counts.delivered + counts.skipped + counts.dead_letters >= 200
        assert not [l for l in letters if "rate" in l["code"]], letters
    finally:
        simulator.stop()


class RefreshingToken:
    """Starts with a token the API no longer takes; a refresh gets the
    good one (as an OAuth refresh would)."""

    def __init__(self, stale: str, fresh: str):
        self.current = stale
        self.fresh = fresh
        self.refreshes = 0

    def token(self) -> str:
        return self.current

    def refresh(self, rejected: str) -> None:
        self.refreshes += 1
        self.current = self.fresh


def test_a_refused_token_is_refreshed_through_the_callback_once(component: Component) -> None:
    simulator = Simulator()
    try:
        letters: list[dict[str, Any]] = []
        credentials = RefreshingToken("expired-token", simulator.token)
        sink = component_destination(component, CONFIG, simulator.api, credentials, letters.append)
        good = [json.loads(line) for line in PROFILES.read_text().splitlines()[:50]]
        pipeline(sink).run(good, table_name="profiles")
        assert credentials.refreshes == 1
        assert simulator.stats()["unauthorized"] == 1
        assert sink.sender.counts.delivered + sink.sender.counts.skipped == 50
    finally:
        simulator.stop()


def test_a_dlt_load_matching_by_email_follows_the_steps_and_remembers(
    component: Component, tmp_path: Path
) -> None:
    """Contract 0.3 through dlt: the by-email example (its employers as
    accounts) on the first 300 example profiles — each looked up and
    created, each company's account too — then the same profiles again:
    the sink's remembered facts make each one update."""
    config = (ROOT / "examples" / "destination-by-email.json").read_text(encoding="utf-8")
    profiles = tmp_path / "profiles.ndjson"
    lines = PROFILES.read_text(encoding="utf-8").splitlines()[:300]
    profiles.write_text("\n".join(lines) + "\n", encoding="utf-8")
    simulator = Simulator()
    try:
        letters: list[dict[str, Any]] = []
        facts: dict[str, str] = {}
        sink = component_destination(
            component, config, simulator.api, StaticToken(simulator.token), letters.append,
            facts=facts,
        )
        pipeline(sink).run(ndjson_profiles(str(profiles), sink), table_name="profiles")
        first = simulator.stats()
        delivered = sink.sender.counts.delivered
        assert delivered > 250, sink.sender.counts
        # The simulated account has no emails: every prospect is created.
        assert first["lookups"] == delivered and first["creates"] == delivered, first
        assert 1 <= first["account_creates"] == first["account_lookups"] <= 5, first
        assert sink.sender.counts.lookups == delivered + first["account_lookups"]
        assert sum(name.startswith("email:") for name in facts) == delivered
        created = simulator.prospects()

        pipeline(sink).run(ndjson_profiles(str(profiles), sink), table_name="profiles")
        second = simulator.stats()
        assert second["lookups"] == first["lookups"], second
        assert second["account_lookups"] == first["account_lookups"], second
        assert second["creates"] == first["creates"], second
        assert second["updates_applied"] - first["updates_applied"] == delivered
        # The same prospects, written again: nothing new, nothing lost.
        assert simulator.prospects().keys() == created.keys()
    finally:
        simulator.stop()
