# Stand-in for the official Caddy image (caddy:<version>): caddy built
# from the Go module proxy at that version with the standard modules, laid
# out as the official image lays it out (binary in /usr/bin, a default
# Caddyfile, /config and /data). Built by build.sh.
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    XDG_CONFIG_HOME=/config \
    XDG_DATA_HOME=/data
VOLUME /config /data
EXPOSE 80 443 443/udp 2019
WORKDIR /srv
CMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
