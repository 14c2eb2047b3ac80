#!/usr/bin/env bash
# Soak: an hour without drift (issue 18). Runs natter under half of
# scenario C's highest sustained rate, with continuous churn, for a long
# time; samples it every 10 s; checks at the end that every acked message
# reached every member that should have it, and that RSS, goroutines and
# open files do not grow. See "Soak" in bench/README.md.
#
#   bench/soak.sh single [DURATION]   # the single binary; default 1h
#   bench/soak.sh procs [DURATION]    # the services as processes
#                                     # (bench/procs.sh); default 30m
#
# Results: bench/results/<date>-soak-<target>.jsonl (a sample a line),
# .md (the summary and the verdict) and -*.png (the charts). Exit status
# 0 for a pass, 3 for a fail, 1 when it could not run.
#
# It runs under flock /tmp/natter-bench.lock, as every long load run on
# this machine must (it takes the lock itself when not started under it).
# The server runs on CPU 0 (SOAK_SERVER_CPUS), each process with
# GOMAXPROCS=1 (SOAK_SERVER_PROCS), the generator on CPU 1
# (SOAK_GEN_CPUS), as bench/run.sh's scenarios run. SOAK_FLAGS adds
# flags of the generator (go run ./bench/soak -h), SOAK_NOTE a line to the
# summary's head, SOAK_LABEL a word to the results' names (smoke, say).
set -euo pipefail
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$0")/.."
root=$(pwd)

lock=/tmp/natter-bench.lock
holds_lock() {
	local fd
	for fd in "/proc/$$/fd"/*; do
		[ "$(readlink "$fd" 2>/dev/null)" = "$lock" ] && return 0
	done
	return 1
}
if ! holds_lock; then
	echo "soak: waiting for $lock (another load run may hold it)" >&2
	exec flock "$lock" "$self" "$@"
fi

target=${1:-}
case $target in
single) duration=${2:-1h} ;;
procs) duration=${2:-30m} ;;
*)
	echo "usage: bench/soak.sh single|procs [DURATION]" >&2
	exit 1
	;;
esac
server_cpus=${SOAK_SERVER_CPUS:-0}
server_procs=${SOAK_SERVER_PROCS:-1}
gen_cpus=${SOAK_GEN_CPUS:-1}

export CHAT_HISTORY_MAX_AGE=${CHAT_HISTORY_MAX_AGE:-10m}
work=$(mktemp -d)
server_pid=
# shellcheck disable=SC2317 # called by the trap
cleanup() {
	if [ "$target" = procs ] && declare -F procs_down >/dev/null; then procs_down; fi
	if [ -n "$server_pid" ]; then
		kill -TERM "$server_pid" 2>/dev/null || true
		wait "$server_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

date=$(date -u +%Y-%m-%dT%H%M%SZ)
prefix=$root/bench/results/$date-soak-$target${SOAK_LABEL:+-$SOAK_LABEL}
mkdir -p "$root/bench/results"
echo "soak: building in $work" >&2
go build -o "$work/soak" ./bench/soak

# await_log FILE TEXT PID prints the first line of FILE holding TEXT.
await_log() {
	local line
	for _ in $(seq 600); do
		if line=$(grep -m 1 -F -- "$2" "$1"); then
			echo "$line"
			return
		fi
		kill -0 "$3" 2>/dev/null || break
		sleep 0.1
	done
	echo "soak: no \"$2\" in $1:" >&2
	tail -n 20 "$1" >&2
	return 1
}
# await_ready ADDR waits for ADDR's /readyz.
await_ready() {
	for _ in $(seq 600); do
		curl -fsS -o /dev/null --max-time 2 "http://$1/readyz" 2>/dev/null && return
		sleep 0.1
	done
	echo "soak: $1 not ready" >&2
	return 1
}

case $target in
single)
	go build -o "$work/natter" ./services/chat
	# As bench/run.sh: every message stored, the per-connection rate limit
	# lifted (publishers send 100 a second), free ports, a fresh store.
	CHAT_RATE_MESSAGES=0 CHAT_HTTP_ADDR=127.0.0.1:0 CHAT_NATS_ADDR=127.0.0.1:0 CHAT_DATA_DIR="$work/data" \
		CHAT_PPROF_ADDR=127.0.0.1:0 GOMAXPROCS=$server_procs taskset -c "$server_cpus" "$work/natter" >"$work/chat.log" 2>&1 &
	server_pid=$!
	pprof=chat=$(await_log "$work/chat.log" 'listener=pprof' "$server_pid" | sed 's/.* addr=\([^ ]*\).*/\1/')
	http=$(grep 'listening http' "$work/chat.log" | grep -v -m 1 'listener=pprof' | sed 's/.* addr=\([^ ]*\).*/\1/')
	nats_addr=$(await_log "$work/chat.log" 'listening nats' "$server_pid" | sed 's/.* addr=\([^ ]*\).*/\1/')
	await_ready "$http"
	addrs=$http
	nats_url=nats://$nats_addr
	procs=chat=$server_pid@$http
	logs=("$work/chat.log")
	;;
procs)
	if [ ! -f bench/procs.sh ]; then
		echo "soak: bench/procs.sh is not here yet" >&2
		exit 1
	fi
	# shellcheck source=bench/procs.sh
	source bench/procs.sh
	procs_build "$work"
	# One NATS server, presence, two broadcasters, two edges.
	CHAT_PPROF_ADDR=1 PROCS_CPUS=$server_cpus GOMAXPROCS=$server_procs procs_up 2 2
	pprof=${PROCS_PPROF:-}
	addrs=$PROCS_EDGES
	nats_url=$PROCS_NATS_URL
	procs=
	for i in "${!PROCS_NAMES[@]}"; do
		item=${PROCS_NAMES[$i]}=${PROCS_PIDS[$i]}
		# The NATS server's address is its client port: no /metrics there.
		[ "${PROCS_NAMES[$i]}" = nats ] || item+=@${PROCS_ADDRS[$i]}
		procs+=${procs:+,}$item
	done
	logs=("$PROCS_LOGS"/*.log)
	;;
esac

echo "soak: $target for $duration; results in ${prefix#"$root"/}.*" >&2
status=0
# shellcheck disable=SC2086 # SOAK_FLAGS is a list of flags
SOAK_COMMAND="bench/soak.sh $*" GOMAXPROCS=1 taskset -c "$gen_cpus" "$work/soak" -target "$target" \
	-addr "$addrs" -nats "$nats_url" -procs "$procs" -pprof "$pprof" -duration "$duration" -out "$prefix" \
	-note "${SOAK_NOTE:-}" ${SOAK_FLAGS:-} || status=$?

# What the server logged at warning and above, for the summary.
if [ -f "$prefix.md" ]; then
	{
		echo
		echo "## Server logs"
		echo
		for f in "${logs[@]}"; do
			# The services log level=…, the NATS server [WRN] and [ERR].
			warn=$(grep -cE 'level=WARN|\[WRN\]' "$f" || true)
			errs=$(grep -cE 'level=ERROR|\[ERR\]' "$f" || true)
			echo "- $(basename "$f" .log): $warn warnings, $errs errors"
			# shellcheck disable=SC2016 # the backquotes are Markdown
			grep -E 'level=(WARN|ERROR)|\[(WRN|ERR)\]' "$f" |
				sed 's/^time=[^ ]* //; s/^\[[0-9]*\] [0-9/]* [0-9:.]* //; s/ session=[^ ]*//; s/ user=[^ ]*//; s/ addr=[^ ]*//' |
				sort | uniq -c | sort -rn | head -n 5 | sed 's/^ *\([0-9]*\) /  - \1 x `/; s/$/`/' || true
		done
	} >>"$prefix.md"
fi
exit "$status"
