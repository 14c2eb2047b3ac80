#!/usr/bin/env bash
# Builds local stand-ins of the public images that deploy/docker/Dockerfile
# and docker-compose.yml name (golang, nats, caddy), under exactly the tags
# they name, FROM scratch: for a machine that cannot pull from any registry
# (natter's CI). The Dockerfile and the compose file stay the ones a user
# runs; only their base images come from here:
#
#   golang:<minor>   this machine's Go toolchain, busybox for a shell
#   nats:<version>   nats-server built from the Go module proxy
#   caddy:<version>  caddy built from the Go module proxy
#
# A tag already present that is not a stand-in (a real image, pulled) is
# left alone; a stand-in already built from the same inputs is kept.
# Needs Go, Docker and a static busybox (Debian: busybox-static).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export PATH="$PATH:/usr/local/go/bin"
export GOWORK=off CGO_ENABLED=0

die() {
	echo "standins: $*" >&2
	exit 1
}

# one_tag NAME FILE PATTERN prints the single image tag of NAME in FILE.
one_tag() {
	local tags
	tags=$(sed -n "$3" "$2" | sort -u)
	[ -n "$tags" ] || die "no $1 image named in $2"
	[ "$(echo "$tags" | wc -l)" -eq 1 ] || die "$2 names several $1 tags: $(echo $tags)"
	echo "$tags"
}

golang_tag=$(one_tag golang "$root/deploy/docker/Dockerfile" 's/^FROM \(golang:[^ ]*\).*/\1/p')
nats_tag=$(one_tag nats "$root/docker-compose.yml" 's/^ *image: *\(nats:[^ ]*\) *$/\1/p')
caddy_tag=$(one_tag caddy "$root/docker-compose.yml" 's/^ *image: *\(caddy:[^ ]*\) *$/\1/p')

busybox=/bin/busybox
[ -x "$busybox" ] || die "no $busybox: apt-get install busybox-static"
if ldd "$busybox" >/dev/null 2>&1; then
	die "$busybox is linked dynamically and would not run FROM scratch: apt-get install busybox-static"
fi
certs=/etc/ssl/certs/ca-certificates.crt
[ -f "$certs" ] || die "no $certs: apt-get install ca-certificates"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# build TAG DOCKERFILE STAMP FILL... builds TAG from DOCKERFILE with a
# context that the function FILL fills in $ctx/rootfs, unless TAG is a real
# image or a stand-in of the same STAMP.
build() {
	local tag=$1 dockerfile=$2 inputs=$3 fill=$4
	local stamp label
	stamp=$( (cat "$dockerfile" "$here/build.sh"; echo "$tag $inputs") | sha256sum | cut -c1-16)
	if label=$(docker image inspect -f '{{index .Config.Labels "natter.standin"}}' "$tag" 2>/dev/null); then
		if [ -z "$label" ] || [ "$label" = "<no value>" ]; then
			echo "standins: $tag is a real image here, kept"
			return
		fi
		if [ "$label" = "$stamp" ]; then
			echo "standins: $tag is up to date"
			return
		fi
	fi
	echo "standins: building $tag"
	ctx="$work/${tag%%:*}"
	mkdir -p "$ctx/rootfs"
	"$fill"
	docker build -q --label "natter.standin=$stamp" --build-arg "GO_VERSION=$go_version" \
		-f "$dockerfile" -t "$tag" "$ctx" >/dev/null
	echo "standins: built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
}

go_version=$(go env GOVERSION)
go_version=${go_version#go}
case "$go_version" in
"${golang_tag#golang:}" | "${golang_tag#golang:}".*) ;;
*) die "$golang_tag needs Go ${golang_tag#golang:}, this machine has $go_version" ;;
esac

fill_golang() {
	mkdir -p "$ctx/rootfs/usr/local" "$ctx/rootfs/bin" "$ctx/rootfs/etc/ssl/certs"
	cp -a "$(go env GOROOT)" "$ctx/rootfs/usr/local/go"
	cp "$busybox" "$ctx/rootfs/bin/busybox"
	cp "$certs" "$ctx/rootfs/etc/ssl/certs/"
}
build "$golang_tag" "$here/golang.Dockerfile" "$go_version $(sha256sum "$busybox")" fill_golang

fill_nats() {
	GOBIN="$ctx/rootfs" go install -trimpath -ldflags='-s -w' \
		"github.com/nats-io/nats-server/v2@v${nats_tag#nats:}"
	# The official image's default configuration.
	cat >"$ctx/rootfs/nats-server.conf" <<-'EOF'
		# Client port of 4222 on all interfaces
		port: 4222

		# HTTP monitoring port
		monitor_port: 8222

		# This is for clustering multiple servers together.
		cluster {
		  # It is recommended to set a cluster name
		  name: "my_cluster"

		  # Route connections to be received on any interface on port 6222
		  port: 6222

		  # Routes are protected, so need to use them with --routes flag
		  # e.g. --routes=nats-route://ruser:T0pS3cr3t@otherdockerhost:6222
		  authorization {
		    user: ruser
		    password: T0pS3cr3t
		    timeout: 2
		  }

		  # Routes are actively solicited and connected to from this server.
		  # This Docker image has none by default, but you can pass a
		  # flag to the nats-server docker image to create one to an existing server.
		  routes = []
		}
	EOF
}
build "$nats_tag" "$here/nats.Dockerfile" "" fill_nats

fill_caddy() {
	local src="$work/caddy-src"
	mkdir -p "$src" "$ctx/rootfs/usr/bin" "$ctx/rootfs/etc/caddy" "$ctx/rootfs/usr/share/caddy" \
		"$ctx/rootfs/etc/ssl/certs"
	# The official build's main package: caddy with its standard modules.
	cat >"$src/main.go" <<-'EOF'
		package main

		import (
			_ "time/tzdata"

			caddycmd "github.com/caddyserver/caddy/v2/cmd"

			_ "github.com/caddyserver/caddy/v2/modules/standard"
		)

		func main() {
			caddycmd.Main()
		}
	EOF
	(
		cd "$src"
		go mod init natter.local/caddy-standin >/dev/null 2>&1
		go get "github.com/caddyserver/caddy/v2@v${caddy_tag#caddy:}" 2>/dev/null
		go mod tidy 2>/dev/null
		go build -trimpath -ldflags='-s -w' -o "$ctx/rootfs/usr/bin/caddy" .
	)
	# The official image's default site: a page on port 80.
	cat >"$ctx/rootfs/etc/caddy/Caddyfile" <<-'EOF'
		:80 {
			root * /usr/share/caddy
			file_server
		}
	EOF
	echo '<!doctype html><title>Caddy</title><p>Caddy works (natter stand-in).' >"$ctx/rootfs/usr/share/caddy/index.html"
	cp "$certs" "$ctx/rootfs/etc/ssl/certs/"
}
build "$caddy_tag" "$here/caddy.Dockerfile" "" fill_caddy
