#!/usr/bin/env bash
# Runs the load scenarios against natter (the single binary, storing every
# message) and against the gorilla/websocket examples/chat server (the
# seed's design, no NATS, no storage), one core each: the server on CPU 0,
# the generator on CPU 1, GOMAXPROCS=1 for both. Results go to
# bench/results/<date>.jsonl (one line per run) and <date>.md (the table).
#
#   bench/run.sh              # scenarios A to F
#   bench/run.sh B C          # some of them (A B C D E F G H M)
#
# G and H run natter as separate processes on this machine (bench/procs.sh:
# one NATS server with JetStream, one presence, two broadcasters, three
# edges or one), none of them pinned, each with Go's default GOMAXPROCS
# (both cores): there are more processes than cores. G's connections come
# from three generator processes started together (one process may hold
# 20,000 open files), H's from one; the generators run with GOMAXPROCS=1,
# not pinned either. G and H are not in the default run.
#
# M runs B's and D's load through the compose mesh (docker-compose.yml:
# Caddy, two edges, two broadcasters, three NATS servers with replicated
# JetStream), a fresh mesh for each run, the generator on CPU 1 and the
# mesh's containers on both cores; it needs Docker, and where no registry
# answers the stand-ins of deploy/standins/build.sh. The generator
# connects to Caddy's address on the compose network, not to the
# published port: Docker's port proxy holds six files per connection, and
# under this machine's limit of 20,000 open files it dies near 3,300
# connections, taking all of them with it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(A B C D E F)

work=$(mktemp -d)
mesh_project=natter-bench-$$
mesh_started=
# shellcheck source=bench/procs.sh
source "$root/bench/procs.sh"
trap 'procs_down; kill $(jobs -p) 2>/dev/null || true; [ -z "$mesh_started" ] || mesh_down; rm -rf "$work"' EXIT
date=$(date -u +%Y-%m-%dT%H%M%SZ)
jsonl="$root/bench/results/$date.jsonl"
md="$root/bench/results/$date.md"
mkdir -p "$root/bench/results"

echo "building the generator and what the scenarios run in $work"
go build -o "$work/loadgen" ./bench/loadgen
if [[ " ${scenarios[*]} " =~ \ [A-F]\  ]]; then
	go build -o "$work/natter" ./services/chat
	src=$(cd bench && GOWORK=off go mod download github.com/gorilla/websocket && GOWORK=off go list -m -f '{{.Dir}}' github.com/gorilla/websocket)
	mkdir "$work/gorilla"
	cp "$src"/examples/chat/*.go "$work/gorilla/"
	printf 'module gorillachat\n\ngo 1.26.0\n\nrequire github.com/gorilla/websocket v1.5.3\n' > "$work/gorilla/go.mod"
	cp "$root/bench/go.sum" "$work/gorilla/go.sum"
	(cd "$work/gorilla" && GOWORK=off GOFLAGS=-mod=mod go build -o "$work/gorillachat" .)
fi
if [[ " ${scenarios[*]} " =~ \ [GH]\  ]]; then
	procs_build "$work"
fi

port=18100
server_pid=
start_server() { # target
	port=$((port + 1))
	case $1 in
	natter)
		rm -rf "$work/data"
		# The per-connection rate limit is lifted: publishers here send up to 200 a second.
		CHAT_RATE_MESSAGES=0 CHAT_HTTP_ADDR=127.0.0.1:$port CHAT_NATS_ADDR=127.0.0.1:0 CHAT_DATA_DIR="$work/data" \
			GOMAXPROCS=1 taskset -c 0 "$work/natter" >"$work/server.log" 2>&1 &
		;;
	gorilla)
		GOMAXPROCS=1 taskset -c 0 "$work/gorillachat" -addr 127.0.0.1:$port >"$work/server.log" 2>&1 &
		;;
	esac
	server_pid=$!
	for _ in $(seq 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return; fi
		sleep 0.1
	done
	echo "server $1 did not start:"; cat "$work/server.log"; exit 1
}
stop_server() {
	kill "$server_pid" 2>/dev/null || true
	wait "$server_pid" 2>/dev/null || true
}
# gen TARGET SCENARIO ARGS...: one generator run against a fresh server;
# its status is 3 when the run went past -fail-p99 or -fail-loss.
gen() {
	local target=$1 scenario=$2 status=0
	shift 2
	start_server "$target"
	GOMAXPROCS=1 taskset -c 1 "$work/loadgen" -target "$target" -scenario "$scenario" \
		-addr "127.0.0.1:$port" -pid "$server_pid" -out "$jsonl" "$@" >/dev/null 2>"$work/last.txt" || status=$?
	cat "$work/last.txt"
	stop_server
	if [ "$status" -ne 0 ] && [ "$status" -ne 3 ]; then
		echo "loadgen failed (status $status); going on with the next run" >&2
		status=0
	fi
	return "$status"
}

# The compose mesh, on ports of its own, without the per-address limit:
# behind Docker's port proxy every client has the same address.
compose=(docker-compose)
command -v docker-compose >/dev/null 2>&1 || compose=(docker compose)
mesh_port=18190
mesh_up() {
	mesh_started=1
	NATTER_HTTP_PORT=$mesh_port NATTER_NATS_PORT=14290 NATTER_MAX_CONNS_PER_IP=0 \
		"${compose[@]}" -p "$mesh_project" up -d --build --quiet-pull >"$work/mesh.log" 2>&1 ||
		{ cat "$work/mesh.log"; exit 1; }
	for _ in $(seq 300); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$mesh_port" && printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3 &&
			head -n 1 <&3 | grep -q ' 200 ') 2>/dev/null; then
			return
		fi
		sleep 0.2
	done
	echo "the mesh did not come up"; "${compose[@]}" -p "$mesh_project" ps; exit 1
}
# caddy_addr is the proxy's address on the compose network.
caddy_addr() {
	local id
	id=$("${compose[@]}" -p "$mesh_project" ps -q caddy)
	echo "$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$id"):8080"
}
mesh_down() {
	"${compose[@]}" -p "$mesh_project" down -v -t 5 >/dev/null 2>&1 || true
	mesh_started=
}
# gen_mesh SCENARIO ARGS...: one generator run against a fresh mesh (a
# post's id is remembered for two minutes, so a second run's posts would
# be taken for the first's).
gen_mesh() {
	local scenario=$1
	shift
	mesh_up
	GOMAXPROCS=1 taskset -c 1 "$work/loadgen" -target natter -scenario "$scenario" \
		-addr "$(caddy_addr)" -out "$jsonl" "$@" >/dev/null 2>"$work/last.txt" || true
	cat "$work/last.txt"
	mesh_down
}

# gen_procs SCENARIO EDGES GENERATORS CONNS SOURCE-BASE ARGS...: one run
# against natter as separate processes (a fresh NATS store), EDGES edges
# and two broadcasters, its CONNS connections split evenly between
# GENERATORS generator processes started together (distinct users, rooms
# and source addresses: two each, from SOURCE-BASE up) that measure one
# window; the first of them measures every process.
gen_procs() {
	local scenario=$1 edges=$2 gens=$3 conns=$4 source=$5 k status=0
	shift 5
	local per=$((conns / gens)) sync=$work/sync-$scenario pids=() pidarg
	local layout="natter as separate processes (bench/procs.sh): one NATS server with JetStream, one presence, two broadcasters, $edges edge(s), none pinned, Go's default GOMAXPROCS (2) each; $gens generator(s) of $per connections, GOMAXPROCS=1, not pinned"
	procs_up "$edges" 2 || { echo "natter's processes did not come up; going on with the next run" >&2; return 0; }
	rm -rf "$sync"
	for ((k = 0; k < gens; k++)); do
		pidarg=()
		[ "$k" -gt 0 ] || pidarg=(-pid "$PROCS_PIDLIST")
		GOMAXPROCS=1 "$work/loadgen" -target natter -scenario "$scenario" -run-id "$date-$scenario" -layout "$layout" \
			-parties "$gens" -sync "$sync" -addr "$PROCS_EDGES" "${pidarg[@]}" -conns "$per" -user-base $((k * per)) \
			-source-base $((source + 2 * k)) -out "$jsonl" "$@" >/dev/null 2>"$work/gen-$k.txt" &
		pids+=($!)
	done
	for k in "${pids[@]}"; do wait "$k" || status=$?; done
	cat "$work"/gen-*.txt
	procs_down
	if [ "$status" -ne 0 ]; then
		echo "a generator failed (status $status); going on with the next run" >&2
	fi
}

# Each scenario, and each target in it, connects from source addresses of
# its own (-source-base): the ports of the runs before it are still in
# TIME_WAIT, and connects from an address short of free ports fail or
# crawl (F after A once measured 1,018 connections a second; gorilla's F
# right after natter's, from the same addresses, 4,830).
base() { # target first-address
	if [ "$1" = gorilla ]; then echo $(($2 + 5)); else echo "$2"; fi
}
for s in "${scenarios[@]}"; do
	case $s in
	A) # 15,000 idle connections, each joined to a room (natter: rooms of 10)
		for t in natter gorilla; do gen $t A -conns 15000 -room-size 10 -publishers 0 -warmup 0s -measure 1s -drain 0s -concurrency 500 -source-base "$(base $t 1)"; done ;;
	B) # one room of 1,000, 10 publishers at 10 msgs/s: 100k deliveries/s
		for t in natter gorilla; do gen $t B -conns 1000 -room-size 1000 -publishers 10 -rate 10 -measure 10s -source-base "$(base $t 11)"; done ;;
	C) # the same room, the rate raised until p99 > 250 ms or loss > 1%
		for t in natter gorilla; do
			for rate in 20 40 60 80 100 150 200; do
				gen $t C -conns 1000 -room-size 1000 -publishers 10 -rate $rate -measure 5s -fail-p99 250ms -fail-loss 1 -source-base "$(base $t 21)" || break
			done
		done ;;
	D) # 5,000 connections in 500 rooms of 10, each publishing 1 msg/s (natter only)
		gen natter D -conns 5000 -room-size 10 -publishers 5000 -rate 1 -measure 10s -concurrency 500 -source-base 31 ;;
	E) # 5,000 clients of one room drop at once and rejoin with since, 100 msgs/s going on (natter only);
		# a message of the window that reaches a member more than 1 s after it counts as lost
		gen natter E -conns 5000 -room-size 5000 -publishers 1 -rate 100 -measure 10s -drain 1s -rejoin -concurrency 500 -source-base 41 ;;
	F) # connect rate: the connect alone, as gorilla's; then natter's
		# connects each joining a room of 10 as well (F-join)
		gen natter F -conns 15000 -no-join -publishers 0 -warmup 0s -measure 1s -drain 0s -concurrency 500 -source-base "$(base natter 101)"
		gen gorilla F -conns 15000 -publishers 0 -warmup 0s -measure 1s -drain 0s -concurrency 500 -source-base "$(base gorilla 101)"
		gen natter F-join -conns 15000 -room-size 10 -publishers 0 -warmup 0s -measure 1s -drain 0s -concurrency 500 -source-base 111 ;;
	G) # 45,000 connections over three edges, rooms of 10 spread over them, each room 1 msg/s (45k deliveries/s), from three generators
		gen_procs G 3 3 45000 121 -room-size 10 -publishers 1500 -rate 1 -measure 10s -concurrency 500 ;;
	H) # one room of 3,000 over three edges, 100 msgs/s (300k deliveries/s); then the same room on one edge
		gen_procs H 3 1 3000 131 -room-size 3000 -publishers 10 -rate 10 -measure 10s -concurrency 500
		gen_procs H-1edge 1 1 3000 136 -room-size 3000 -publishers 10 -rate 10 -measure 10s -concurrency 500 ;;
	M) # B and D through the compose mesh: members spread over two edges behind the proxy
		gen_mesh M-B -conns 1000 -room-size 1000 -publishers 10 -rate 10 -measure 10s
		gen_mesh M-D -conns 5000 -room-size 10 -publishers 5000 -rate 1 -measure 10s -concurrency 500 ;;
	esac
done

"$work/loadgen" -report "$jsonl" -command "bench/run.sh ${scenarios[*]}" >"$md"
cat "$md"
