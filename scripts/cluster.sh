#!/usr/bin/env bash
# A local nextbest cluster to try cluster mode (docs/cluster.md): three nats-server processes
# forming one JetStream cluster, and three `nextbest serve --cluster` nodes on them, all on
# 127.0.0.1.
#
#   bash scripts/cluster.sh up [--nats-only]   start them, wait until they serve, print the
#                                              addresses (--nats-only: the NATS servers only)
#   bash scripts/cluster.sh status             which of them run
#   bash scripts/cluster.sh down [--purge]     stop exactly what `up` started, by its pid
#                                              files; the data stays for the next `up`
#                                              unless --purge
#
# Ports, each plus NEXTBEST_CLUSTER_PORT_OFFSET (default 0; say 100 for a second cluster):
#   NATS   nats-1..3: clients 4222-4224, routes 6222-6224, monitoring 8222-8224
#   nodes  node-1..3: gRPC 50051-50053, metrics 9091-9093
# Environment:
#   NEXTBEST_CLUSTER_DIR  where everything goes (default: cluster/ in the repository):
#                         nats-<i>/ (JetStream store), node-<i>/ (the node's --data and
#                         ready.json), logs/, pids/
#   NEXTBEST_BIN          the nextbest binary (default: target/release/nextbest, built with
#                         `cargo build --release` when missing or older than cluster mode)
#   NEXTBEST_RULES        the catalog the nodes serve (default: rules/ in the repository)
#   NEXTBEST_CLUSTER_WAIT seconds to wait for each server or node to be ready (default 60)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=$(realpath -m -- "${NEXTBEST_CLUSTER_DIR:-$root/cluster}")
offset=${NEXTBEST_CLUSTER_PORT_OFFSET:-0}
wait_secs=${NEXTBEST_CLUSTER_WAIT:-60}
stop_secs=15
servers=(1 2 3)

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
    exit 2
}

for number in "$offset" "$wait_secs"; do
    if ! [[ $number =~ ^[0-9]+$ ]]; then
        echo "cluster.sh: NEXTBEST_CLUSTER_PORT_OFFSET and NEXTBEST_CLUSTER_WAIT take a whole number, not '$number'" >&2
        exit 2
    fi
done

client_port() { echo $((4221 + $1 + offset)); }
route_port() { echo $((6221 + $1 + offset)); }
monitor_port() { echo $((8221 + $1 + offset)); }
grpc_port() { echo $((50050 + $1 + offset)); }
metrics_port() { echo $((9090 + $1 + offset)); }

nats_urls() {
    local urls=() i
    for i in "${servers[@]}"; do
        urls+=("nats://127.0.0.1:$(client_port "$i")")
    done
    (IFS=,; echo "${urls[*]}")
}

# The pid file of a component: nats-<i> or node-<i>.
pid_file() { echo "$dir/pids/$1.pid"; }

# What identifies a process as the one `up` started for a component: its directory on its
# command line (a PID reused by another process since does not have it).
marker() {
    case $1 in
        nats-*) echo "$dir/$1/store" ;;
        node-*) echo "$dir/$1" ;;
    esac
}

# The PID a component runs as, if its pid file names a live process of ours; else nothing.
running_pid() {
    local file pid
    file=$(pid_file "$1")
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    if [ -r "/proc/$pid/cmdline" ]; then
        local cmdline
        cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline")
        [[ $cmdline == *"$(marker "$1")"* ]] || return 0
    fi
    echo "$pid"
}

components() {
    local i
    for i in "${servers[@]}"; do echo "node-$i"; done
    for i in "${servers[@]}"; do echo "nats-$i"; done
}

# `GET PATH` from 127.0.0.1:PORT over HTTP/1.0 (bash's /dev/tcp: curl is not needed),
# bounded to 2 s; prints the whole response, status line first.
# shellcheck disable=SC2016 # $1 and $2 are the inner bash's arguments
http_get() {
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$2" >&3 && cat <&3' \
        _ "$1" "$2" 2>/dev/null
}

# Whether something listens on 127.0.0.1:PORT.
# shellcheck disable=SC2016 # $1 is the inner bash's argument
listening() {
    timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

log_tail() {
    echo "--- the end of $1 ---" >&2
    tail -n "${2:-30}" "$1" >&2 2>/dev/null || echo "(no log)" >&2
}

# Stops every component by its pid file: TERM, then KILL after $stop_secs seconds; the
# nodes before the NATS servers they use.
stop() {
    local group name pid waited alive pids
    for group in node nats; do
        pids=()
        for name in $(components); do
            [[ $name == "$group"-* ]] || continue
            pid=$(running_pid "$name")
            if [ -n "$pid" ]; then
                kill -TERM "$pid" 2>/dev/null || true
                pids+=("$pid")
                echo "stopping $name (pid $pid)"
            fi
            rm -f "$(pid_file "$name")"
        done
        waited=0
        while [ ${#pids[@]} -gt 0 ]; do
            alive=()
            for pid in "${pids[@]}"; do
                if kill -0 "$pid" 2>/dev/null; then alive+=("$pid"); fi
            done
            pids=("${alive[@]}")
            [ ${#pids[@]} -gt 0 ] || break
            if [ "$waited" -ge $((stop_secs * 10)) ]; then
                echo "still running after ${stop_secs}s, killing: ${pids[*]}" >&2
                kill -KILL "${pids[@]}" 2>/dev/null || true
                break
            fi
            sleep 0.1
            waited=$((waited + 1))
        done
    done
}

# The meta leader named in a /jsz answer (`"leader": "nats-2"`), or nothing. (No `head`
# or `grep -q` in pipes here: under pipefail, the writer they cut off fails the pipe.)
jsz_leader() {
    grep -o '"leader": *"[^"]*"' <<<"$1" | sed -n '1s/.*: *"\(.*\)"/\1/p'
}

# Why the NATS cluster is not ready yet (nothing when it is): every server answers /healthz
# 200, names the same meta leader and counts 3 peers, and that leader sees both others
# current. `/healthz` alone says ok once two servers elect a leader, before the third has
# joined, when a stream of 3 replicas cannot be placed yet.
nats_not_ready() {
    local i jsz leader="" named size current health
    for i in "${servers[@]}"; do
        jsz=$(http_get "$(monitor_port "$i")" /jsz) || { echo "nats-$i does not answer"; return; }
        named=$(jsz_leader "$jsz")
        size=$(grep -o '"cluster_size": *[0-9]*' <<<"$jsz" | grep -o '[0-9]*$' || true)
        [ -n "$named" ] || { echo "nats-$i knows no meta leader"; return; }
        [ "$size" = "${#servers[@]}" ] || { echo "nats-$i counts ${size:-no} peers"; return; }
        [ -z "$leader" ] || [ "$leader" = "$named" ] || { echo "nats-$i names another meta leader"; return; }
        leader=$named
        health=$(http_get "$(monitor_port "$i")" /healthz) || true
        [[ $health == "HTTP/"*" 200 "* ]] || { echo "nats-$i /healthz is not ok"; return; }
    done
    # Only the meta leader lists the others, as `replicas`.
    jsz=$(http_get "$(monitor_port "${leader#nats-}")" /jsz) || { echo "$leader does not answer"; return; }
    current=$(grep -c '"current": *true' <<<"$jsz" || true)
    [ "$current" -ge $((${#servers[@]} - 1)) ] || echo "meta leader $leader does not see the others current"
}

ensure_nats_server() {
    if command -v nats-server >/dev/null 2>&1; then
        nats=$(command -v nats-server)
    elif [ -x /usr/sbin/nats-server ]; then
        nats=/usr/sbin/nats-server
    elif command -v apt-get >/dev/null 2>&1; then
        echo "installing nats-server (apt-get)"
        apt-get install -y --no-install-recommends nats-server ||
            { apt-get update && apt-get install -y --no-install-recommends nats-server; } || {
            echo "cluster.sh: could not install nats-server; as root: apt-get install -y nats-server" >&2
            exit 1
        }
        nats=$(command -v nats-server || echo /usr/sbin/nats-server)
    else
        echo "cluster.sh: nats-server is not installed (https://github.com/nats-io/nats-server/releases)" >&2
        exit 1
    fi
}

# Whether the nextbest at $1 knows cluster mode (one built before it does not).
knows_cluster() {
    local help
    help=$(timeout 20 "$1" serve --help 2>/dev/null) || true
    [[ $help == *"--cluster "* ]]
}

ensure_bin() {
    if [ -n "${NEXTBEST_BIN:-}" ]; then
        bin=$(realpath -m -- "$NEXTBEST_BIN")
        [ -x "$bin" ] || { echo "cluster.sh: NEXTBEST_BIN=$NEXTBEST_BIN is not an executable" >&2; exit 1; }
        knows_cluster "$bin" ||
            echo "cluster.sh: warning: $bin serve --help shows no --cluster; it was built before cluster mode?" >&2
    else
        bin=$root/target/release/nextbest
        if [ ! -x "$bin" ] || ! knows_cluster "$bin"; then
            echo "building $bin (cargo build --release)"
            (cd "$root" && cargo build --release) || { echo "cluster.sh: cargo build --release failed" >&2; exit 1; }
        fi
    fi
}

# Fails the `up` in progress: says why, shows the log, stops what this `up` started.
fail_up() {
    echo "cluster.sh up: $1" >&2
    [ -z "${2:-}" ] || log_tail "$2" 40
    echo "stopping what was started; the logs stay in $dir/logs" >&2
    stop >&2
    exit 1
}

# Waits until the components named are ready (`$check` prints why not, or nothing), or
# fails the `up`: one exited, or $wait_secs passed.
wait_ready() {
    local check=$1 why name pid deadline=$((SECONDS + wait_secs))
    shift
    while true; do
        for name in "$@"; do
            pid=$(cat "$(pid_file "$name")")
            if ! kill -0 "$pid" 2>/dev/null; then
                [ ! -s "$dir/logs/$name.out" ] || log_tail "$dir/logs/$name.out"
                fail_up "$name (pid $pid) exited before it was ready" "$dir/logs/$name.log"
            fi
        done
        why=$($check "$@") || true
        [ -n "$why" ] || return 0
        [ "$SECONDS" -lt "$deadline" ] || fail_up "not ready in ${wait_secs}s: $why" "$dir/logs/$1.log"
        sleep 0.2
    done
}

node_not_ready() {
    [ -s "$dir/$1/ready.json" ] || echo "$1 wrote no $dir/$1/ready.json yet"
}

# "grpc" or "metrics" of a node's ready file: {"grpc": "127.0.0.1:50051", "metrics": ...}.
ready_addr() {
    grep -o "\"$2\": *\"[^\"]*\"" "$dir/$1/ready.json" | sed 's/.*: *"\(.*\)"/\1/'
}

up() {
    local nats_only=false i j pid name routes port busy=() rules
    case "${1:-}" in
        --nats-only) nats_only=true ;;
        "") ;;
        *) usage ;;
    esac
    for name in $(components); do
        pid=$(running_pid "$name")
        if [ -n "$pid" ]; then
            echo "cluster.sh: a cluster is running from $dir ($name is pid $pid): bash scripts/cluster.sh down first" >&2
            exit 1
        fi
        rm -f "$(pid_file "$name")"
    done
    for i in "${servers[@]}"; do
        for port in "$(client_port "$i")" "$(route_port "$i")" "$(monitor_port "$i")"; do
            if listening "$port"; then busy+=("$port"); fi
        done
        if ! $nats_only; then
            for port in "$(grpc_port "$i")" "$(metrics_port "$i")"; do
                if listening "$port"; then busy+=("$port"); fi
            done
        fi
    done
    if [ ${#busy[@]} -gt 0 ]; then
        echo "cluster.sh: ports in use on 127.0.0.1: ${busy[*]} (set NEXTBEST_CLUSTER_PORT_OFFSET to use others)" >&2
        exit 1
    fi
    ensure_nats_server
    $nats_only || ensure_bin
    rules=$(realpath -m -- "${NEXTBEST_RULES:-$root/rules}")
    mkdir -p "$dir/logs" "$dir/pids"
    trap 'fail_up "interrupted"' INT TERM

    # Each server lists the other two as routes; -n names it in JetStream's cluster.
    for i in "${servers[@]}"; do
        routes=()
        for j in "${servers[@]}"; do
            [ "$j" = "$i" ] || routes+=("nats://127.0.0.1:$(route_port "$j")")
        done
        mkdir -p "$dir/nats-$i/store"
        nohup "$nats" -a 127.0.0.1 -p "$(client_port "$i")" -m "$(monitor_port "$i")" \
            -js -sd "$dir/nats-$i/store" -n "nats-$i" --cluster_name nextbest \
            --cluster "nats://127.0.0.1:$(route_port "$i")" --routes "$(IFS=,; echo "${routes[*]}")" \
            -l "$dir/logs/nats-$i.log" >>"$dir/logs/nats-$i.out" 2>&1 </dev/null &
        echo $! >"$(pid_file "nats-$i")"
    done
    # What a server prints before its log is open (a bad flag, say) goes to nats-<i>.out.
    wait_ready nats_not_ready nats-1 nats-2 nats-3
    echo "NATS cluster ready: $(nats_urls)"

    if ! $nats_only; then
        for i in "${servers[@]}"; do
            name=node-$i
            mkdir -p "$dir/$name"
            rm -f "$dir/$name/ready.json"
            nohup "$bin" serve --cluster "$(nats_urls)" --node-id "$name" \
                --listen "127.0.0.1:$(grpc_port "$i")" --metrics-listen "127.0.0.1:$(metrics_port "$i")" \
                --rules "$rules" --data "$dir/$name" --ready-file "$dir/$name/ready.json" \
                >>"$dir/logs/$name.log" 2>&1 </dev/null &
            echo $! >"$(pid_file "$name")"
            # One at a time: the first creates the streams the others then find.
            wait_ready node_not_ready "$name"
        done
    fi

    echo
    echo "nextbest cluster up; data, logs and pid files in $dir"
    for i in "${servers[@]}"; do
        printf '  nats-%s  nats://127.0.0.1:%s  monitoring http://127.0.0.1:%s/jsz  pid %s\n' \
            "$i" "$(client_port "$i")" "$(monitor_port "$i")" "$(cat "$(pid_file "nats-$i")")"
    done
    if ! $nats_only; then
        for i in "${servers[@]}"; do
            printf '  node-%s  gRPC %s  metrics http://%s/metrics  pid %s  log %s\n' "$i" \
                "$(ready_addr "node-$i" grpc)" "$(ready_addr "node-$i" metrics)" \
                "$(cat "$(pid_file "node-$i")")" "$dir/logs/node-$i.log"
        done
        echo "try:  grpcurl -plaintext $(ready_addr node-1 grpc) list   (any node answers any call)"
    fi
    echo "nodes join with: --cluster $(nats_urls)"
    echo "stop: bash scripts/cluster.sh down   (down --purge also deletes $dir)"
    trap - INT TERM
}

status() {
    local name pid all=0 leader
    for name in $(components | sort); do
        pid=$(running_pid "$name")
        if [ -n "$pid" ]; then
            case $name in
                nats-*)
                    leader=$(jsz_leader "$(http_get "$(monitor_port "${name#nats-}")" /jsz || true)")
                    echo "$name  running  pid $pid  nats://127.0.0.1:$(client_port "${name#nats-}")  meta leader ${leader:-none}"
                    ;;
                node-*)
                    if [ -s "$dir/$name/ready.json" ]; then
                        echo "$name  running  pid $pid  gRPC $(ready_addr "$name" grpc)  metrics $(ready_addr "$name" metrics)"
                    else
                        echo "$name  running  pid $pid  (not ready)"
                    fi
                    ;;
            esac
        elif [ -f "$(pid_file "$name")" ]; then
            echo "$name  stopped  (pid file says $(cat "$(pid_file "$name")"), log $dir/logs/$name.log)"
            all=3
        else
            echo "$name  not started"
            all=3
        fi
    done
    return "$all"
}

down() {
    local purge=false name
    case "${1:-}" in
        --purge) purge=true ;;
        "") ;;
        *) usage ;;
    esac
    stop
    if $purge; then
        # Only what `up` makes: NEXTBEST_CLUSTER_DIR may hold other things.
        for name in $(components) logs pids; do
            rm -rf -- "${dir:?}/$name"
        done
        rmdir -- "$dir" 2>/dev/null || true
        echo "deleted the cluster's data in $dir"
    fi
}

command=${1:-}
[ $# -eq 0 ] || shift
case "$command" in
    up) up "$@" ;;
    down) down "$@" ;;
    status) [ $# -eq 0 ] || usage; status ;;
    *) usage ;;
esac
