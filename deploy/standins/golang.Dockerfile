# Stand-in for the official Go image (golang:<minor>), for machines that
# cannot pull from a registry: this machine's own Go toolchain, FROM
# scratch, with busybox for a shell and the machine's CA certificates for
# the module proxy. Built by build.sh; the context is a folder it fills.
FROM scratch
COPY rootfs/ /
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ARG GO_VERSION
ENV GOLANG_VERSION=${GO_VERSION} \
    GOTOOLCHAIN=local \
    GOPATH=/go \
    PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /go/bin /go/src /tmp && chmod 1777 /tmp
WORKDIR /go
CMD ["sh"]
