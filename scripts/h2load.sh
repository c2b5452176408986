#!/usr/bin/env bash
# gRPC Decide against the empty-RPC ceiling, measured with h2load (Debian's
# nghttp2-client), which costs far less CPU than a Rust gRPC client on the same cores.
#
#   bash scripts/h2load.sh
#
# Starts one `nextbest serve` (release build) on a fresh data directory holding one
# customer (examples/customers/ada.json) and the sample catalog, then, in interleaved
# rounds of the same length, sends `ProbeService.Ping` (an empty call) and
# `DecisionService.Decide` (that customer, `web.home_banner`) closed loop over 4
# connections x 16 streams, and prints each round's rate and Decide's share of Ping's,
# and the median share. Then open loop at half Decide's median peak (h2load --rps): the
# latency percentiles of Decide and Ping from h2load's per-request log, beside a plain
# TCP round trip on loopback (Python, one byte each way) for the machine's own floor.
# Checks afterwards that the server counted every Decide as a decision and answered no
# call with an error (h2load sees only HTTP statuses; gRPC's travel in trailers).
#
# Environment: NEXTBEST_H2LOAD_ROUNDS (default 7), NEXTBEST_H2LOAD_SECONDS per round
# (default 4), NEXTBEST_H2LOAD_PORT (default 50071; metrics on the next port),
# NEXTBEST_BIN (default target/release/nextbest, built when missing).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${NEXTBEST_H2LOAD_ROUNDS:-7}
secs=${NEXTBEST_H2LOAD_SECONDS:-4}
port=${NEXTBEST_H2LOAD_PORT:-50071}
bin=${NEXTBEST_BIN:-$root/target/release/nextbest}
clients=4
streams=16
for number in "$rounds" "$secs" "$port"; do
    if ! [[ $number =~ ^[1-9][0-9]*$ ]]; then
        echo "h2load.sh: NEXTBEST_H2LOAD_ROUNDS, _SECONDS and _PORT take a positive whole number, not '$number'" >&2
        exit 2
    fi
done
metrics_port=$((port + 1))

if ! command -v h2load >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        apt-get install -y --no-install-recommends nghttp2-client \
            || { apt-get update && apt-get install -y --no-install-recommends nghttp2-client; }
    else
        echo "h2load.sh: h2load is missing: install nghttp2-client" >&2
        exit 1
    fi
fi
if [[ ! -x $bin ]]; then
    (cd "$root" && cargo build --release --bin nextbest)
fi

work=$(mktemp -d)
server=""
cleanup() {
    if [[ -n $server ]]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# One customer, the sample catalog.
python3 -c 'import json,sys; c = json.load(open(sys.argv[1])); print(json.dumps({"id": c["id"], "attributes": c["attributes"]}))' \
    "$root/examples/customers/ada.json" >"$work/customers.jsonl"
customer=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' \
    "$root/examples/customers/ada.json")
"$bin" import --strict --rules "$root/rules" --data "$work/data" "$work/customers.jsonl" >/dev/null

# Request bodies, framed as gRPC messages (a flag byte, a 4-byte length, the protobuf).
python3 - "$work" "$customer" <<'EOF'
import struct, sys
work, customer = sys.argv[1], sys.argv[2]
def field(number, text):
    data = text.encode()
    assert len(data) < 128, "one length byte"
    return bytes([number << 3 | 2, len(data)]) + data
def frame(message):
    return b"\0" + struct.pack(">I", len(message)) + message
open(f"{work}/ping.bin", "wb").write(frame(b""))
open(f"{work}/decide.bin", "wb").write(frame(field(1, customer) + field(2, "web.home_banner")))
EOF

"$bin" serve --rules "$root/rules" --data "$work/data" --listen "127.0.0.1:$port" \
    --metrics-listen "127.0.0.1:$metrics_port" --log-level warn >"$work/serve.log" 2>&1 &
server=$!
url="http://127.0.0.1:$port"
ping_url="$url/nextbest.v1.ProbeService/Ping"
decide_url="$url/nextbest.v1.DecisionService/Decide"
grpc=(-H 'content-type: application/grpc' -H 'te: trailers')
for _ in $(seq 1 100); do
    if h2load -n 1 -c 1 "${grpc[@]}" -d "$work/ping.bin" "$ping_url" 2>/dev/null \
        | grep -q '1 succeeded'; then
        break
    fi
    if ! kill -0 "$server" 2>/dev/null; then
        echo "h2load.sh: nextbest serve exited:" >&2
        cat "$work/serve.log" >&2
        exit 1
    fi
    sleep 0.1
done
if ! h2load -n 1 -c 1 "${grpc[@]}" -d "$work/ping.bin" "$ping_url" 2>/dev/null | grep -q '1 succeeded'; then
    echo "h2load.sh: nextbest serve did not answer Ping in 10 s:" >&2
    cat "$work/serve.log" >&2
    exit 1
fi

# Requests per second of one closed-loop run; its count of succeeded requests is added
# to $work/<name>.count.
rate() {
    local name=$1 target=$2 out
    out=$(h2load -c "$clients" -m "$streams" -D "$secs" --warm-up-time=1 "${grpc[@]}" \
        -d "$work/$name.bin" "$target")
    if ! grep -q ' 0 failed, 0 errored' <<<"$out"; then
        echo "h2load.sh: $name had failures:" >&2
        echo "$out" >&2
        exit 1
    fi
    awk '/^requests:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^succeeded/) print $i }' \
        <<<"$out" >>"$work/$name.count"
    cut_off
    awk '/^finished in/ { print $4 }' <<<"$out"
}

# A timed run ends with up to clients x streams calls in flight: h2load resets their
# streams and the server counts them as errors (UNKNOWN: tonic was reading the request;
# a run of a fixed number of calls, `-n`, ends with none). Counted in $work/runs, to
# allow for.
cut_off() {
    echo $((clients * streams)) >>"$work/runs"
}

echo "closed loop: $clients connections x $streams streams, $rounds rounds of ${secs} s each (after 1 s of warm-up), interleaved"
printf '%-6s %14s %14s %8s\n' round 'Ping/s' 'Decide/s' share
shares=()
decides=()
for r in $(seq 1 "$rounds"); do
    ping=$(rate ping "$ping_url")
    decide=$(rate decide "$decide_url")
    share=$(python3 -c "print(f'{$decide / $ping * 100:.0f}')")
    shares+=("$share")
    decides+=("$decide")
    printf '%-6s %14.0f %14.0f %7s%%\n' "$r" "$ping" "$decide" "$share"
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "median share: $(median "${shares[@]}")% of $rounds rounds"

# Open loop at half Decide's median peak, spread over the connections.
half=$(median "${decides[@]}")
per_client=$(python3 -c "print(max(1, int($half / 2 / $clients)))")
percentiles() {
    python3 - "$1" <<'EOF'
import sys
times = sorted(int(line.split("\t")[2]) for line in open(sys.argv[1]) if line.strip())
q = lambda p: times[min(len(times) - 1, int(p * len(times)))]
print(f"{len(times)} requests: p50 {q(0.50)} µs, p99 {q(0.99)} µs, p99.9 {q(0.999)} µs")
EOF
}
echo "open loop at $((per_client * clients))/s ($per_client/s on each of $clients connections), ${secs} s:"
for name in ping decide; do
    target=$ping_url
    [[ $name == decide ]] && target=$decide_url
    h2load -c "$clients" -m "$streams" --rps "$per_client" -D "$secs" --warm-up-time=1 \
        "${grpc[@]}" -d "$work/$name.bin" --log-file "$work/$name.log" "$target" >/dev/null
    cut_off
    echo "  $name: $(percentiles "$work/$name.log")"
done
python3 - <<'EOF'
import socket, threading, time
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
def echo():
    conn, _ = server.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while (b := conn.recv(1)):
        conn.sendall(b)
threading.Thread(target=echo, daemon=True).start()
client = socket.create_connection(server.getsockname())
client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
times = []
for _ in range(5000):
    start = time.perf_counter_ns()
    client.sendall(b"x")
    client.recv(1)
    times.append((time.perf_counter_ns() - start) // 1000)
times.sort()
print(f"  loopback TCP round trip (Python, 1 byte): p50 {times[2500]} µs, p99 {times[4950]} µs")
EOF

# Every Decide answered OK was counted as a decision, every Decide h2load saw succeed
# was answered OK, and no call failed but those cut off at the end of a run (UNKNOWN).
metrics=$(python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$metrics_port/metrics').read().decode())")
decided=$(awk '/^nextbest_decisions_total/ { s += $NF } END { printf "%d", s }' <<<"$metrics")
decide_ok=$(awk '/^nextbest_grpc_requests_total\{/ && /code="OK"/ && /method="Decide"/ { s += $NF } END { printf "%d", s }' <<<"$metrics")
unknown=$(awk '/^nextbest_grpc_errors_total\{/ && /code="UNKNOWN"/ { s += $NF } END { printf "%d", s }' <<<"$metrics")
others=$(awk '/^nextbest_grpc_errors_total\{/ && !/code="UNKNOWN"/ { s += $NF } END { printf "%d", s }' <<<"$metrics")
sent=$(awk '{ s += $1 } END { printf "%d", s }' "$work/decide.count")
cut=$(awk '{ s += $1 } END { printf "%d", s }' "$work/runs")
if ((decided != decide_ok || decide_ok < sent || others > 0 || unknown > cut)); then
    echo "h2load.sh: the server counted $decided decisions and $decide_ok Decide calls answered OK for $sent that h2load saw succeed; $others calls in error, and $unknown UNKNOWN (at most $cut can be cut off at the ends of runs)" >&2
    echo "$metrics" | grep '^nextbest_grpc_errors_total' >&2 || true
    exit 1
fi
echo "checked: $decide_ok Decide calls answered OK and $decided decisions counted (h2load measured $sent of them); no errors but $unknown calls cut off at the ends of runs (at most $cut can be)"
