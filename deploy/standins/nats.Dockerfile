# Stand-in for the official NATS image (nats:<version>, its scratch
# variant): nats-server built from the Go module proxy at that version,
# laid out as the official image lays it out. Built by build.sh.
FROM scratch
COPY rootfs/ /
EXPOSE 4222 8222 6222
ENTRYPOINT ["/nats-server"]
CMD ["--config", "nats-server.conf"]
