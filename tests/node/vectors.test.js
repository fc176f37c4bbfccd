// The golden vectors of tests/vectors, run against the Outreach component
// in a second, independent host: Node.js, after `jco transpile`. The same
// cases as the wasmtime runner (tests/src/lib.rs), compared the same way.
//
// The component is the one `cargo test` builds; OUTREACH_COMPONENT points
// elsewhere.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, mkdirSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const vectors = join(root, 'tests', 'vectors');
const wasm = process.env.OUTREACH_COMPONENT
  ?? join(root, 'target', 'guest', 'wasm32-wasip2', 'component', 'outreach_guest.wasm');
const out = join(here, 'out');

if (!existsSync(wasm)) {
  throw new Error(`${wasm} not found: run \`cargo build\` (or \`cargo test\`) first`);
}
mkdirSync(out, { recursive: true });
execFileSync(join(here, 'node_modules', '.bin', 'jco'), ['transpile', wasm, '-o', out, '--quiet']);
writeFileSync(join(out, 'package.json'), '{"type":"module"}');
const { destination } = await import(pathToFileURL(join(out, 'outreach_guest.js')).href);

const readJson = (path) => JSON.parse(readFileSync(path, 'utf8'));
const jsonFiles = (dir) => readdirSync(dir).filter((f) => f.endsWith('.json')).sort();

// Strings and {repeat, times} objects, concatenated.
function buildParts(parts) {
  return parts.map((p) => (typeof p === 'string' ? p : p.repeat.repeat(p.times))).join('');
}

function textOf(holder, field) {
  if (holder[`${field}_text`] !== undefined) return holder[`${field}_text`];
  if (holder[`${field}_parts`] !== undefined) return buildParts(holder[`${field}_parts`]);
  if (field in holder) return JSON.stringify(holder[field]);
  return undefined;
}

function configText(holder) {
  if (holder.config_file !== undefined) return readFileSync(join(vectors, holder.config_file), 'utf8');
  return textOf(holder, 'config');
}

const num = (v) => (v === undefined ? null : Number(v));
const opt = (v) => (v === undefined ? null : v);

// The component's values in the vectors' JSON form (as serde writes the
// Rust mirror types).
function configure(text) {
  try {
    return { ok: destination.Configured.create(text) };
  } catch (e) {
    if (e.payload === undefined) throw e;
    return { errors: e.payload.map(({ setting, message }) => ({ setting, message })) };
  }
}

const JSON_API_HEADERS = [
  { name: 'Content-Type', value: 'application/vnd.api+json' },
  { name: 'Accept', value: 'application/vnd.api+json' },
];

function comparableOutcome(outcome, expected) {
  switch (outcome.tag) {
    case 'skip':
      return { skip: outcome.val };
    case 'invalid':
      return {
        invalid: {
          code: outcome.val.code,
          fate: outcome.val.fate,
          message: outcome.val.message,
          audiences: outcome.val.audiences,
        },
      };
    case 'send':
      return {
        send: outcome.val.map((r, i) => {
          const request = {
            method: r.method.toUpperCase(),
            path: r.path,
            headers: r.headers.map(({ name, value }) => ({ name, value })),
            body: JSON.parse(r.body),
            key: r.key,
            audiences: r.audiences,
          };
          const expectedRequest = expected.send?.[i] ?? {};
          if (!('headers' in expectedRequest)) {
            assert.deepEqual(request.headers, JSON_API_HEADERS);
            delete request.headers;
          }
          assert.ok(!r.headers.some((h) => h.name.toLowerCase() === 'authorization'));
          return request;
        }),
      };
    default:
      throw new Error(`unknown outcome ${outcome.tag}`);
  }
}

function normalisedExpectation(expect) {
  const copy = structuredClone(expect);
  for (const request of copy.send ?? []) {
    if (request.body_parts !== undefined) {
      request.body = JSON.parse(buildParts(request.body_parts));
      delete request.body_parts;
    }
  }
  return copy;
}

function comparableVerdict(v) {
  switch (v.tag) {
    case 'delivered':
    case 'refresh-credentials':
      return v.tag;
    case 'retry':
      return { retry: { 'not-before-ms': num(v.val.notBeforeMs), reason: v.val.reason } };
    case 'rejected':
      return { rejected: { code: v.val.code, message: v.val.message, audience: opt(v.val.audience) } };
    case 'fatal':
      return { fatal: v.val };
    case 'continue':
      return { continue: stepJson(v.val) };
    default:
      throw new Error(`unknown verdict ${v.tag}`);
  }
}

// A classification in the vectors' form: what it taught only when it
// taught something (as serde leaves empty lists out).
function comparableClassification(c, expect) {
  const actual = { verdict: comparableVerdict(c.verdict) };
  if ('budget' in expect) {
    const b = c.budget;
    actual.budget = { limit: num(b.limit), remaining: num(b.remaining), 'reset-at-ms': num(b.resetAtMs) };
  }
  if (c.remember.length > 0) actual.remember = c.remember.map(({ name, value }) => ({ name, value }));
  if (c.forget.length > 0) actual.forget = c.forget;
  return actual;
}

// A request as the component takes it; the fields since 0.3 default to
// what every earlier request holds.
function witRequest(r) {
  return {
    method: r.method.toLowerCase(),
    path: r.path,
    headers: r.headers,
    body: r.body,
    key: r.key,
    audiences: r.audiences,
    purpose: r.purpose ?? 'update',
    recall: r.recall ?? undefined,
    context: r.context ?? '',
  };
}

// A request the component answered, in the vectors' form: the method in
// capitals, and the fields since 0.3 left out where they hold their
// defaults.
function vectorRequest(r) {
  const request = {
    method: r.method.toUpperCase(),
    path: r.path,
    headers: r.headers.map(({ name, value }) => ({ name, value })),
    body: r.body,
    key: r.key,
    audiences: r.audiences,
  };
  if (r.purpose !== 'update') request.purpose = r.purpose;
  if (r.recall !== undefined && r.recall !== null) request.recall = r.recall;
  if (r.context !== '') request.context = r.context;
  return request;
}

// The steps vectors' form: body and context parsed when not empty.
function stepJson(r) {
  const request = vectorRequest(r);
  for (const field of ['body', 'context']) {
    if (typeof request[field] === 'string' && request[field] !== '') request[field] = JSON.parse(request[field]);
  }
  return request;
}

// A steps vector's request back in the component's form.
function stepRequest(v) {
  const request = { ...v };
  for (const field of ['body', 'context']) {
    if (request[field] !== undefined && typeof request[field] !== 'string') request[field] = JSON.stringify(request[field]);
  }
  return witRequest(request);
}

function witResponse(r) {
  let body = r.body;
  if (body === undefined || body === null) body = '';
  else if (typeof body !== 'string') body = JSON.stringify(body);
  return { status: r.status, headers: r.headers ?? [], body };
}

test('describe', () => {
  const expected = readJson(join(vectors, 'describe.json')).expect;
  const d = destination.describe();
  assert.equal(JSON.parse(d.configSchema).type, 'object');
  assert.deepEqual(
    {
      name: d.name,
      'default-api-base': d.defaultApiBase,
      oauth: {
        'authorize-url': d.oauth.authorizeUrl,
        'token-url': d.oauth.tokenUrl,
        scopes: d.oauth.scopes,
        'min-seconds-between-tokens': d.oauth.minSecondsBetweenTokens,
        'client-authentication': d.oauth.clientAuthentication,
      },
      'rate-limit': {
        requests: d.rateLimit.requests,
        'window-seconds': d.rateLimit.windowSeconds,
        per: d.rateLimit.per,
      },
    },
    expected,
  );
});

for (const file of jsonFiles(join(vectors, 'config'))) {
  for (const c of readJson(join(vectors, 'config', file)).cases) {
    test(`config/${file}: ${c.name}`, () => {
      const result = configure(configText(c));
      assert.deepEqual(result.ok ? { ok: true } : { errors: result.errors }, c.expect);
    });
  }
}

for (const file of jsonFiles(join(vectors, 'plan'))) {
  const vector = readJson(join(vectors, 'plan', file));
  // Cases sharing a configuration are planned as one batch, as a host does.
  const batches = new Map();
  for (const c of vector.cases) {
    const config = configText(c) ?? configText(vector);
    if (!batches.has(config)) batches.set(config, []);
    batches.get(config).push(c);
  }
  for (const [config, cases] of batches) {
    const { ok: configured } = configure(config);
    const outcomes = configured.plan(cases.map((c) => textOf(c, 'record')));
    assert.equal(outcomes.length, cases.length);
    cases.forEach((c, i) => {
      test(`plan/${file}: ${c.name}`, () => {
        const expected = normalisedExpectation(c.expect);
        assert.deepEqual(comparableOutcome(outcomes[i], expected), expected);
      });
    });
  }
}

for (const file of jsonFiles(join(vectors, 'classify'))) {
  const vector = readJson(join(vectors, 'classify', file));
  const { ok: configured } = configure(configText(vector));
  const now = BigInt(vector.now_ms);
  for (const c of vector.cases) {
    test(`classify/${file}: ${c.name}`, () => {
      const classification = configured.classify(
        witRequest(c.request ?? vector.request),
        witResponse(c.response),
        now,
      );
      assert.deepEqual(comparableClassification(classification, c.expect), c.expect);
    });
  }
}

// A merge vector's request: the default request with the case's fields
// (`body` is JSON sent as text, `body_text` text as is).
function mergeRequest(base, overrides) {
  const request = { ...base };
  for (const [name, value] of Object.entries(overrides)) {
    if (name === 'body') request.body = JSON.stringify(value);
    else if (name === 'body_text') request.body = value;
    else request[name] = value;
  }
  return request;
}

function comparableRequest(r) {
  let body;
  try {
    body = JSON.parse(r.body);
  } catch {
    body = r.body;
  }
  return { ...r, method: r.method.toUpperCase(), body };
}

for (const file of jsonFiles(join(vectors, 'merge'))) {
  const vector = readJson(join(vectors, 'merge', file));
  const { ok: configured } = configure(configText(vector));
  for (const c of vector.cases) {
    test(`merge/${file}: ${c.name}`, () => {
      const older = mergeRequest(vector.request, c.older);
      const newer = mergeRequest(vector.request, c.newer);
      const merged = configured.merge(witRequest(older), witRequest(newer));
      const expected =
        c.expect.merged === null ? null : comparableRequest(mergeRequest(newer, c.expect.merged));
      const actual = merged === undefined || merged === null ? null : comparableRequest(vectorRequest(merged));
      assert.deepEqual(actual, expected);
    });
  }
}

// Deliveries of several steps (contract 0.3): plan, recall, classify,
// merge and configuration cases, as tests/src/lib.rs runs them.
for (const file of jsonFiles(join(vectors, 'steps'))) {
  const vector = readJson(join(vectors, 'steps', file));
  const now = BigInt(vector.now_ms ?? 0);
  for (const c of vector.cases) {
    test(`steps/${file}: ${c.name}`, () => {
      const config = configText(c) ?? configText(vector);
      const isConfigCase = !('record' in c || 'recall' in c || 'response' in c || 'older' in c);
      const result = configure(config);
      if (isConfigCase) {
        assert.deepEqual(result.ok ? { ok: true } : { errors: result.errors }, c.expect);
        return;
      }
      const configured = result.ok;
      let actual;
      if ('record' in c) {
        const [outcome] = configured.plan([textOf(c, 'record')]);
        actual =
          outcome.tag === 'send'
            ? { send: outcome.val.map(stepJson) }
            : comparableOutcome(outcome, c.expect);
      } else if ('recall' in c) {
        actual = stepJson(configured.recall(stepRequest(c.recall.request), c.recall.value));
      } else if ('response' in c) {
        actual = comparableClassification(
          configured.classify(stepRequest(c.request), witResponse(c.response), now),
          c.expect,
        );
      } else {
        const merged = configured.merge(stepRequest(c.older), stepRequest(c.newer));
        actual = merged === undefined || merged === null ? null : stepJson(merged);
      }
      assert.deepEqual(actual, c.expect);
    });
  }
}
