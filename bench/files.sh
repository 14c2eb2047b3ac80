#!/usr/bin/env bash
# Files through the single binary (issue 19): how fast a 9 MiB file goes
# up (POST /files) and comes back (GET /files/ID), and the process's peak
# RSS (VmHWM) before and after, which says whether a file is held in
# memory. See "Files" in bench/README.md.
#
#   bench/files.sh [ROUNDS] [MiB]    # default 10 rounds of 9 MiB
#
# Results: bench/results/<date>-files.md. Runs under flock
# /tmp/natter-bench.lock, as every load run on this machine must (it takes
# the lock itself when not started under it). The server runs on CPU 0
# with GOMAXPROCS=1, curl on CPU 1, as bench/run.sh's scenarios run.
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
	echo "files: waiting for $lock (another load run may hold it)" >&2
	exec flock "$lock" "$self" "$@"
fi

rounds=${1:-10}
mib=${2:-9}
work=$(mktemp -d)
server_pid=
cleanup() {
	if [ -n "$server_pid" ]; then
		kill -TERM "$server_pid" 2>/dev/null || true
		wait "$server_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/natter" ./services/chat
CHAT_HTTP_ADDR=127.0.0.1:0 CHAT_NATS_ADDR=127.0.0.1:0 CHAT_DATA_DIR="$work/data" CHAT_RATE_MESSAGES=0 \
	GOMAXPROCS=1 taskset -c 0 "$work/natter" >"$work/chat.log" 2>&1 &
server_pid=$!
http=
for _ in $(seq 300); do
	if http=$(grep 'listening http' "$work/chat.log" | grep -v -m 1 'listener=pprof' | sed 's/.* addr=\([^ ]*\).*/\1/') && [ -n "$http" ] &&
		curl -fsS -o /dev/null "http://$http/readyz" 2>/dev/null; then
		break
	fi
	http=
	sleep 0.1
done
if [ -z "$http" ]; then
	echo "files: the server did not come up:" >&2
	tail -n 20 "$work/chat.log" >&2
	exit 1
fi
vm() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$server_pid/status"; } # KiB

head -c $((mib << 20)) /dev/urandom >"$work/file"
want=$(sha256sum <"$work/file" | cut -d' ' -f1)
rss0=$(vm VmRSS)
hwm0=$(vm VmHWM)
ups=() downs=() rounds_rss=()
for i in $(seq "$rounds"); do
	out=$(taskset -c 1 curl -fsS -w '\n%{time_total}' -H "X-File-Name: round-$i.bin" --data-binary @"$work/file" \
		"http://$http/files?room=bench&user=bench")
	id=$(head -n 1 <<<"$out" | sed 's/.*"file":"\([^"]*\)".*/\1/')
	ups+=("$(tail -n 1 <<<"$out")")
	t=$(taskset -c 1 curl -fsS -o "$work/back" -w '%{time_total}' "http://$http/files/$id")
	downs+=("$t")
	got=$(sha256sum <"$work/back" | cut -d' ' -f1)
	if [ "$got" != "$want" ]; then
		echo "files: round $i came back different" >&2
		exit 1
	fi
	rounds_rss+=("$(($(vm VmRSS) / 1024))")
done
rss1=$(vm VmRSS)
hwm1=$(vm VmHWM)
# What is held a while later: the NATS server's caches of the blocks just
# written and read expire, and the Go runtime gives back what it freed.
sleep 60
rss2=$(vm VmRSS)

# stats SECONDS... prints the median and the range in MiB/s.
stats() {
	printf '%s\n' "$@" | awk -v mib="$mib" '{ print mib / $1 }' | sort -g | awk '{ r[NR] = $1 } END {
		med = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2
		printf "%.0f MiB/s (%.0f to %.0f)", med, r[1], r[NR] }'
}
date=$(date -u +%Y-%m-%dT%H%M%SZ)
out=$root/bench/results/$date-files.md
{
	echo "# Files through the single binary, $date"
	echo
	echo "Command: \`bench/files.sh $*\`. Machine: $(grep -m 1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc --all) cores;" \
		"the server on CPU 0 with GOMAXPROCS=1, curl on CPU 1, over loopback; a fresh store."
	echo
	echo "$rounds rounds of one file of $mib MiB (random bytes): uploaded with \`curl --data-binary\`, read back with \`curl\`, each compared by SHA-256."
	echo
	echo "| | median (range) |"
	echo "| --- | --- |"
	echo "| upload (POST /files, stored in CHAT_FILES, R1) | $(stats "${ups[@]}") |"
	echo "| download (GET /files/ID) | $(stats "${downs[@]}") |"
	echo
	echo "| the server's memory | before the first round | after the last | a minute later |"
	echo "| --- | --- | --- | --- |"
	echo "| RSS (VmRSS) | $((rss0 / 1024)) MiB | $((rss1 / 1024)) MiB | $((rss2 / 1024)) MiB |"
	echo "| peak RSS (VmHWM) | $((hwm0 / 1024)) MiB | $((hwm1 / 1024)) MiB | |"
	echo
	echo "RSS after each round: ${rounds_rss[*]} MiB. Upload times: ${ups[*]} s. Download times: ${downs[*]} s."
} >"$out"
cat "$out"
echo "files: ${out#"$root"/}" >&2
