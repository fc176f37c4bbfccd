#!/usr/bin/env bash
# A 3-node NATS JetStream cluster and three `outreach-host serve --nats`
# workers on loopback, delivering to the built-in Outreach API simulator.
# Runs until Ctrl-C (or SIGTERM), then stops the workers (each hands its
# partitions over), the servers and the simulator.
#
#   deploy/cluster-local.sh                  # build, then run
#   curl -H 'content-type: application/x-ndjson' --data-binary @examples/profiles.ndjson \
#        http://127.0.0.1:8181/v1/destinations/local/records
#   . /tmp/outreach-cluster-local/operator.env   # the operator's NATS user
#   target/debug/outreach-host cluster --nats "$NATS_URLS" status
#
# The servers take only the users of deploy/nats-users.conf (worker,
# producer, operator), with passwords made here for this run and kept in
# $STATE/*.env (mode 0600): the workers connect as `worker`, the commands
# above as `operator`.
#
# Settings (environment): STATE (default /tmp/outreach-cluster-local, wiped
# at start), NATS_PORT (4222: clients 4222-4224, routes +2000), HTTP_PORT
# (8181: workers 8181-8183), SIM_PORT (8189), OUTREACH_HOST (a built binary;
# default: `cargo build` then target/debug/outreach-host). Needs
# `nats-server` (Debian: apt-get install nats-server).
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=${STATE:-/tmp/outreach-cluster-local}
NATS_PORT=${NATS_PORT:-4222}
HTTP_PORT=${HTTP_PORT:-8181}
SIM_PORT=${SIM_PORT:-8189}
if [[ -z "${OUTREACH_HOST:-}" ]]; then
    cargo build -p outreach-host
    OUTREACH_HOST=target/debug/outreach-host
fi
NATS_SERVER=$(command -v nats-server || echo /usr/sbin/nats-server)

rm -rf "$STATE"
mkdir -p "$STATE"
pids=()
stop() {
    trap - INT TERM EXIT
    # Workers first (they hand over and stop), then the rest.
    for pid in "${workers[@]:-}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${workers[@]:-}"; do wait "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop INT TERM EXIT

routes=""
urls=""
for i in 0 1 2; do
    routes+="${routes:+,}nats://127.0.0.1:$((NATS_PORT + 2000 + i))"
    urls+="${urls:+,}nats://127.0.0.1:$((NATS_PORT + i))"
done
umask 077
password() { head -c 18 /dev/urandom | base64 | tr -d '/+='; }
# Not exported: only the servers get all three.
OUTREACH_NATS_WORKER_PASSWORD=$(password)
OUTREACH_NATS_PRODUCER_PASSWORD=$(password)
OUTREACH_NATS_OPERATOR_PASSWORD=$(password)
for role in worker producer operator; do
    var="OUTREACH_NATS_${role^^}_PASSWORD"
    printf 'export OUTREACH_NATS_USER=%s\nexport OUTREACH_NATS_PASSWORD=%s\n' "$role" "${!var}" >"$STATE/$role.env"
done
cp deploy/nats-users.conf "$STATE/nats-users.conf"
for i in 0 1 2; do
    cat >"$STATE/nats-$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:$((NATS_PORT + i))
jetstream { store_dir: "$STATE/nats-$i" }
cluster {
  name: outreach-local
  listen: 127.0.0.1:$((NATS_PORT + 2000 + i))
  routes: ["${routes//,/\", \"}"]
}
include nats-users.conf
EOF
    OUTREACH_NATS_WORKER_PASSWORD=$OUTREACH_NATS_WORKER_PASSWORD \
        OUTREACH_NATS_PRODUCER_PASSWORD=$OUTREACH_NATS_PRODUCER_PASSWORD \
        OUTREACH_NATS_OPERATOR_PASSWORD=$OUTREACH_NATS_OPERATOR_PASSWORD \
        "$NATS_SERVER" -c "$STATE/nats-$i.conf" >"$STATE/nats-$i.log" 2>&1 &
    pids+=($!)
done

"$OUTREACH_HOST" simulate --listen "127.0.0.1:$SIM_PORT" >"$STATE/simulator.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    grep -q "export OUTREACH_ACCESS_TOKEN=" "$STATE/simulator.log" 2>/dev/null && break
    sleep 0.1
done
# The simulator's token for every account (a demo: real accounts connect
# on the status page, or with `outreach-host cluster import-tokens`).
OUTREACH_ACCESS_TOKEN=$(sed -n 's/.*export OUTREACH_ACCESS_TOKEN=//p' "$STATE/simulator.log")
export OUTREACH_ACCESS_TOKEN

cat >"$STATE/destinations.toml" <<EOF
login_retry_secs = 5
[cluster]
partitions = 16
lease_secs = 10
replicas = 3

[[destinations]]
name = "local"
account = "demo@example.com"
api_base = "http://127.0.0.1:$SIM_PORT/api/v2"
config = "$PWD/examples/destination.json"
EOF

workers=()
for i in 0 1 2; do
    # shellcheck disable=SC1091
    (. "$STATE/worker.env" && exec "$OUTREACH_HOST" serve --destinations "$STATE/destinations.toml" --nats "$urls" \
        --worker "w$i" --listen "127.0.0.1:$((HTTP_PORT + i))" >"$STATE/worker-$i.out" \
        2>"$STATE/worker-$i.log") &
    workers+=($!)
done
for i in 0 1 2; do
    for _ in $(seq 600); do
        grep -q "listening on" "$STATE/worker-$i.out" 2>/dev/null && break
        if ! kill -0 "${workers[$i]}" 2>/dev/null; then
            echo "worker w$i did not start:" >&2
            cat "$STATE/worker-$i.log" >&2
            exit 1
        fi
        sleep 0.1
    done
done

echo "NATS_URLS=$urls"
echo "NATS users: $STATE/operator.env (cluster commands), $STATE/producer.env (publish to intake)"
echo "workers: http://127.0.0.1:$HTTP_PORT http://127.0.0.1:$((HTTP_PORT + 1)) http://127.0.0.1:$((HTTP_PORT + 2))"
echo "simulator: http://127.0.0.1:$SIM_PORT/sim/stats"
echo "logs and state: $STATE; Ctrl-C stops everything"
wait "${workers[@]}"
