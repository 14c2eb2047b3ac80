# shellcheck shell=bash
# bench/procs.sh: natter as separate processes on this machine, for load
# and soak runs. Source it; do not run it. It starts one NATS server with
# JetStream (no auth, on a free port of 127.0.0.1, its store in the work
# directory), one presence, N broadcasters (one queue group) and M edges,
# each service with an HTTP address of its own on 127.0.0.1 (a free port,
# read from its "listening http" log line, the one without
# listener=pprof) and CHAT_RATE_MESSAGES=0.
#
#   source bench/procs.sh
#   trap 'procs_down' EXIT          # or call procs_down from your own trap
#   procs_build "$work"             # once: nats-server, edge, broadcaster,
#                                   # presence into $work/bin
#   procs_up 3 2                    # 3 edges, 2 broadcasters; returns when
#                                   # every /readyz answers 200 and presence
#                                   # is active; status 1 (and all down) if not
#   loadgen -addr "$PROCS_EDGES" -pid "$PROCS_PIDLIST" ...
#   procs_down                      # SIGTERM, edges first, NATS last; waits
#
# procs_up and procs_down must run in the caller's shell, not in a
# subshell such as $(...): the processes are that shell's children (it
# waits for them) and the variables below are set in it.
#
# After procs_up:
#   PROCS_NATS_URL     nats://127.0.0.1:PORT
#   PROCS_EDGE_ADDRS   array of the edges' host:port (edge-1 first)
#   PROCS_EDGES        the same, comma-separated (loadgen -addr)
#   PROCS_NAMES        array: nats, presence, broadcaster-1.., edge-1..
#   PROCS_PIDS         array of their pids, in the same order
#   PROCS_ADDRS        array of their addresses: NATS's client address,
#                      the services' HTTP address (/readyz, /metrics)
#   PROCS_PIDLIST      name=pid,... of all of them (loadgen -pid)
#   PROCS_PPROF        name=host:port,... of every process's pprof listener
#                      (/debug/pprof/; the NATS server's -profile port
#                      first, then presence...), when CHAT_PPROF_ADDR
#                      is set; empty when it is not
#   PROCS_LOGS         the directory of their logs, <name>.log
# Each edge's CHAT_EDGE_ID is its name (edge-1, ...). procs_pid NAME
# prints one pid.
#
# Environment read by procs_up (all optional):
#   PROCS_CPUS         a CPU list for taskset (e.g. 0 or 0-1) under which
#                      every process starts; empty: not pinned
#   PROCS_READY_TIMEOUT  seconds to wait for each stage (default 60)
#   CHAT_*             passed through to every service (GOMAXPROCS too),
#                      except CHAT_NATS_URL, CHAT_HTTP_ADDR and CHAT_EDGE_ID,
#                      which procs_up sets; CHAT_RATE_MESSAGES defaults
#                      to 0 (no per-connection limit) unless set
#   CHAT_PPROF_ADDR    any value but empty gives each service a pprof
#                      listener of its own, on a free port of 127.0.0.1
#                      (CHAT_PPROF_ADDR=127.0.0.1:0), read from its log
#                      into PROCS_PPROF; unset or empty: none
# A second procs_up needs a procs_down first. The NATS store is emptied
# at each procs_up: every run starts from no stream.

# shellcheck disable=SC2034 # the PROCS_ variables are for the caller
PROCS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROCS_DIR=
PROCS_NATS_URL=
PROCS_EDGES=
PROCS_PIDLIST=
PROCS_PPROF=
PROCS_LOGS=
PROCS_EDGE_ADDRS=()
PROCS_NAMES=()
PROCS_PIDS=()
PROCS_ADDRS=()

# _PROCS_PPROF_RE matches the pprof listener's "listening http" line, in
# text (listener=pprof) or JSON ("listener":"pprof"): the service's own
# line is the one that does not match it.
_PROCS_PPROF_RE='listener=pprof|"listener":"pprof"'

# procs_build WORKDIR: builds the four binaries into WORKDIR/bin, the NATS
# server from the version the shared module requires.
procs_build() {
	PROCS_DIR=$1
	mkdir -p "$PROCS_DIR/bin"
	(cd "$PROCS_ROOT" &&
		go build -o "$PROCS_DIR/bin/nats-server" github.com/nats-io/nats-server/v2 &&
		go build -o "$PROCS_DIR/bin/" ./services/edge ./services/broadcaster ./services/presence)
}

# procs_up EDGES BROADCASTERS: starts NATS, presence, the broadcasters,
# then the edges, and waits until all are ready.
procs_up() {
	local edges=$1 broadcasters=$2 i
	if [ -z "$PROCS_DIR" ] || [ ! -x "$PROCS_DIR/bin/edge" ]; then
		echo "procs_up: procs_build first" >&2
		return 1
	fi
	if [ ${#PROCS_PIDS[@]} -gt 0 ]; then
		echo "procs_up: already up (${PROCS_NAMES[*]}); procs_down first" >&2
		return 1
	fi
	PROCS_LOGS=$PROCS_DIR/logs
	rm -rf "$PROCS_DIR/nats-data" "$PROCS_LOGS"
	mkdir -p "$PROCS_LOGS"

	# -p -1: a free port, which the server logs; -profile -1 likewise
	# serves net/http/pprof on a free port when CHAT_PPROF_ADDR is set.
	local prof=()
	if [ -n "${CHAT_PPROF_ADDR:-}" ]; then prof=(-profile -1); fi
	_procs_start nats "$PROCS_DIR/bin/nats-server" -a 127.0.0.1 -p -1 -js -sd "$PROCS_DIR/nats-data" "${prof[@]}"
	local addr
	addr=$(_procs_await_log nats 'Listening for client connections on ' | sed 's/.*Listening for client connections on \([0-9.:]*\).*/\1/') ||
		{ _procs_fail "NATS did not listen"; return 1; }
	PROCS_ADDRS[0]=$addr
	PROCS_NATS_URL=nats://$addr
	_procs_await_log nats 'Server is ready' >/dev/null || { _procs_fail "NATS not ready"; return 1; }

	_procs_start_service presence presence
	for ((i = 1; i <= broadcasters; i++)); do
		_procs_start_service "broadcaster-$i" broadcaster
	done
	_procs_await_ready || return 1
	PROCS_EDGE_ADDRS=()
	for ((i = 1; i <= edges; i++)); do
		CHAT_EDGE_ID=edge-$i _procs_start_service "edge-$i" edge
	done
	_procs_await_ready || return 1
	for ((i = 1; i <= edges; i++)); do
		PROCS_EDGE_ADDRS+=("$(_procs_addr "edge-$i")")
	done
	PROCS_EDGES=$(IFS=,; echo "${PROCS_EDGE_ADDRS[*]}")
	PROCS_PIDLIST=
	for i in "${!PROCS_NAMES[@]}"; do
		PROCS_PIDLIST+=${PROCS_PIDLIST:+,}${PROCS_NAMES[$i]}=${PROCS_PIDS[$i]}
	done
	PROCS_PPROF=
	if [ -n "${CHAT_PPROF_ADDR:-}" ]; then
		local name port
		port=$(_procs_await_log nats 'profiling port: ' | sed 's/.*profiling port: \([0-9]*\).*/\1/') ||
			{ _procs_fail "NATS has no profiling port"; return 1; }
		PROCS_PPROF=nats=127.0.0.1:$port
		for name in "${PROCS_NAMES[@]}"; do
			[ "$name" != nats ] || continue
			addr=$(_procs_await_listen "$name" pprof) || { _procs_fail "$name has no pprof listener"; return 1; }
			PROCS_PPROF+=${PROCS_PPROF:+,}$name=$addr
		done
	fi
	# A fresh presence announces once it has heard from every edge (a
	# heartbeat interval): joins before that are not announced.
	_procs_await_metric presence 'natter_presence_active 1' ||
		{ _procs_fail "presence did not become active"; return 1; }
}

# procs_down stops every process procs_up started: SIGTERM to the edges
# (their clients get a close), then to presence and the broadcasters, then
# to NATS, each group waited for (SIGKILL after 15 s). Safe to call twice.
procs_down() {
	local group
	for group in edge 'presence|broadcaster' nats; do
		local pids=() i
		for i in "${!PROCS_NAMES[@]}"; do
			if [[ ${PROCS_NAMES[$i]} =~ ^($group) ]]; then pids+=("${PROCS_PIDS[$i]}"); fi
		done
		[ ${#pids[@]} -gt 0 ] || continue
		kill -TERM "${pids[@]}" 2>/dev/null || true
		local deadline=$((SECONDS + 15)) alive
		while :; do
			alive=
			for i in "${pids[@]}"; do kill -0 "$i" 2>/dev/null && alive=1; done
			if [ -z "$alive" ] || [ $SECONDS -ge $deadline ]; then break; fi
			sleep 0.1
		done
		[ -z "$alive" ] || kill -KILL "${pids[@]}" 2>/dev/null || true
		for i in "${pids[@]}"; do wait "$i" 2>/dev/null || true; done
	done
	PROCS_NAMES=() PROCS_PIDS=() PROCS_ADDRS=() PROCS_EDGE_ADDRS=()
	PROCS_EDGES='' PROCS_PIDLIST='' PROCS_PPROF='' PROCS_NATS_URL=''
}

# procs_pid NAME prints NAME's pid.
procs_pid() {
	local i
	for i in "${!PROCS_NAMES[@]}"; do
		if [ "${PROCS_NAMES[$i]}" = "$1" ]; then
			echo "${PROCS_PIDS[$i]}"
			return
		fi
	done
	return 1
}

_procs_start() { # name command args...
	local name=$1
	shift
	if [ -n "${PROCS_CPUS:-}" ]; then
		set -- taskset -c "$PROCS_CPUS" "$@"
	fi
	"$@" >"$PROCS_LOGS/$name.log" 2>&1 &
	PROCS_NAMES+=("$name")
	PROCS_PIDS+=($!)
	PROCS_ADDRS+=("")
}

_procs_start_service() { # name binary
	# Each its own port: one address for all would let only the first
	# listen. Unset or empty, it stays as it is.
	if [ -n "${CHAT_PPROF_ADDR:-}" ]; then local -x CHAT_PPROF_ADDR=127.0.0.1:0; fi
	CHAT_NATS_URL=$PROCS_NATS_URL CHAT_HTTP_ADDR=127.0.0.1:0 CHAT_RATE_MESSAGES=${CHAT_RATE_MESSAGES-0} \
		_procs_start "$1" "$PROCS_DIR/bin/$2"
}

# _procs_await_log NAME TEXT [[-v] ERE] prints the first line of NAME's
# log holding TEXT and matching the extended regexp ERE (with -v, not
# matching it), once there is one; status 1 if the process ends or time
# runs out.
_procs_await_log() {
	local name=$1 text=$2 pid line deadline=$((SECONDS + ${PROCS_READY_TIMEOUT:-60}))
	local filter=(-E -e "${3-}") # the empty ERE matches any line
	if [ "${3-}" = -v ]; then filter=(-v -E -e "$4"); fi
	pid=$(procs_pid "$name")
	while [ $SECONDS -lt $deadline ] && kill -0 "$pid" 2>/dev/null; do
		if line=$(grep -F -- "$text" "$PROCS_LOGS/$name.log" | grep -m 1 "${filter[@]}"); then
			echo "$line"
			return
		fi
		sleep 0.05
	done
	return 1
}

# _procs_await_listen NAME http|pprof prints the address of NAME's
# "listening http" line: for pprof the pprof listener's, for http the
# service's own, never the pprof one.
_procs_await_listen() {
	local line filter=(-v "$_PROCS_PPROF_RE")
	if [ "$2" = pprof ]; then filter=("$_PROCS_PPROF_RE"); fi
	line=$(_procs_await_log "$1" 'listening http ' "${filter[@]}") || return 1
	line=${line#*listening http }
	echo "${line%%[\" ]*}"
}

_procs_addr() { # name
	local i
	for i in "${!PROCS_NAMES[@]}"; do
		if [ "${PROCS_NAMES[$i]}" = "$1" ]; then
			echo "${PROCS_ADDRS[$i]}"
			return
		fi
	done
}

# _procs_await_ready reads the HTTP address of every service without one
# yet and waits until its /readyz answers 200.
_procs_await_ready() {
	local i name addr
	for i in "${!PROCS_NAMES[@]}"; do
		name=${PROCS_NAMES[$i]}
		if [ "$name" = nats ] || [ -n "${PROCS_ADDRS[$i]}" ]; then continue; fi
		addr=$(_procs_await_listen "$name" http) || { _procs_fail "$name did not listen"; return 1; }
		PROCS_ADDRS[i]=$addr
		local deadline=$((SECONDS + ${PROCS_READY_TIMEOUT:-60}))
		until curl -fsS -o /dev/null --max-time 2 "http://$addr/readyz" 2>/dev/null; do
			if [ $SECONDS -ge $deadline ] || ! kill -0 "${PROCS_PIDS[$i]}" 2>/dev/null; then
				_procs_fail "$name not ready at $addr"
				return 1
			fi
			sleep 0.1
		done
	done
}

_procs_await_metric() { # name line
	local addr deadline=$((SECONDS + ${PROCS_READY_TIMEOUT:-60}))
	addr=$(_procs_addr "$1")
	until curl -fsS --max-time 2 "http://$addr/metrics" 2>/dev/null | grep -qxF -- "$2"; do
		[ $SECONDS -lt $deadline ] || return 1
		sleep 0.2
	done
}

# _procs_fail reports what failed with the ends of the logs, and stops
# everything.
_procs_fail() {
	local f
	echo "procs_up: $1" >&2
	for f in "$PROCS_LOGS"/*.log; do
		echo "--- $(basename "$f")" >&2
		tail -n 5 "$f" >&2
	done
	procs_down
}
