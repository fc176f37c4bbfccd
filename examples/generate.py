#!/usr/bin/env python3
"""Writes examples/profiles.ndjson: realistic XDM profiles for the demo,
deterministic (seeded), with a few bad records of each kind mixed in.

    python3 examples/generate.py [COUNT] > examples/profiles.ndjson
"""
import json
import random
import sys

AUDIENCES = [
    "7f4b9c2e-0d1a-4c55-9a8e-newsletter",
    "91aa0d3f-5b2c-4f1e-8d7a-churnrisk",
    "c0ffee00-1234-4abc-9def-vipclients",
    "5e1f7a9b-2c3d-4e5f-8a9b-webinar2026",
]
FIRST = ["Ada", "Grace", "Zoë", "Алексей", "Jürgen", "Mei", "Oluwaseun", "Sofía", "Łukasz", "Aiko", "Nadia", "Émile"]
LAST = ["Lovelace", "Hopper", "Müller", "山田", "Okafor", "García", "Nowak", "Dubois", "Kowalski", "Rossi", "Ngata"]
TITLES = ["Head of Data", "CTO", "Marketing Manager", "VP Sales", "Analyst", "Product Owner", "Buyer"]
CITIES = [("Berlin", "DE"), ("Paris", "FR"), ("Madrid", "ES"), ("Kraków", "PL"), ("Milano", "IT"), ("Dublin", "IE")]
COMPANIES = ["Example GmbH", "Acme SA", "Globex SpA", "Initech Ltd", "Umbrella sp. z o.o."]
INTERESTS = ["analytics", "streaming", "wasm", "crm", "ai", "security", "cloud"]
STATUSES = ["realized", "existing", "exited"]


def profile(rng, i):
    first, last = rng.choice(FIRST), rng.choice(LAST)
    city, country = rng.choice(CITIES)
    ups = {}
    for audience in AUDIENCES:
        if rng.random() < 0.6:
            ups[audience] = {"status": rng.choice(STATUSES), "lastQualificationTime": "2026-11-20T10:00:00Z"}
    if rng.random() < 0.3:
        ups["unscheduled-audience-%d" % rng.randrange(5)] = {"status": "realized"}
    record = {
        "identityMap": {
            "Oid": [{"id": str(1000 + i), "primary": True}],
            "ECID": [{"id": "%032x" % rng.getrandbits(128)}],
        },
        "person": {"name": {"firstName": first, "lastName": last}, "jobTitle": rng.choice(TITLES)},
        "personalEmail": {"address": "%s.%d@example.com" % (first.lower(), i)},
        "workAddress": {"city": city, "country": country},
        "employer": {"name": rng.choice(COMPANIES)},
        "interests": rng.sample(INTERESTS, rng.randrange(0, 4)),
        "scores": {"lead": round(rng.random() * 100, 1)},
        "segmentMembership": {"ups": ups},
    }
    if rng.random() < 0.5:
        record["mobilePhone"] = {"number": "+49 151 %07d" % rng.randrange(10**7)}
    if rng.random() < 0.2:
        record["loyalty"] = {"tier": rng.choice(["bronze", "silver", "gold"])}
    return record


def bad(rng, i, kind):
    """Records the connector must refuse, each with a clear reason."""
    good = profile(rng, i)
    if kind == "no-identity":
        del good["identityMap"]["Oid"]
    elif kind == "non-numeric-id":
        good["identityMap"]["Oid"][0]["id"] = "OID-%d" % i
    elif kind == "negative-id":
        good["identityMap"]["Oid"][0]["id"] = -i
    elif kind == "conflicting-ids":
        good["identityMap"]["Oid"].append({"id": str(999000 + i)})
    elif kind == "unknown-status":
        good["segmentMembership"]["ups"][AUDIENCES[0]] = {"status": "pending"}
    elif kind == "too-long":
        good["person"]["jobTitle"] = "Chief " * 60
    elif kind == "not-json":
        return '{"identityMap": {"Oid": [{"id": "%d"' % (1000 + i)
    elif kind == "not-an-object":
        return json.dumps([good])
    return json.dumps(good, ensure_ascii=False)


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    rng = random.Random(20261123)
    kinds = ["no-identity", "non-numeric-id", "negative-id", "conflicting-ids",
             "unknown-status", "too-long", "not-json", "not-an-object"]
    for i in range(count):
        if i % 150 == 149:
            print(bad(rng, i, kinds[(i // 150) % len(kinds)]))
        else:
            print(json.dumps(profile(rng, i), ensure_ascii=False))


if __name__ == "__main__":
    main()
