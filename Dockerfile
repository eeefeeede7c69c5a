# The holdfast image for Docker and Podman users:
#
#   docker build -t holdfast:dev \
#     --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg SOURCE="$(git remote get-url origin)" .
#
# It is the image scripts/image/build.sh makes without a registry or daemon
# (see docs/kubernetes.md, "The image"): Debian 12 with PostgreSQL 15 and
# pgBackRest from Debian, the binaries in /usr/lib/postgresql/15/bin,
# pgbackrest in /usr/bin (the agents find it on PATH), holdfast in
# /usr/local/bin, running as postgres with the fixed uid/gid 999.
# Keep the two in step (scripts/image/base.sh and scripts/image/hooks/).

# ---------------------------------------------------------------- build
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd ./cmd
COPY internal ./internal
ARG TARGETOS=linux
ARG TARGETARCH
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -buildvcs=false -ldflags='-s -w' -o /out/holdfast ./cmd/holdfast

# -------------------------------------------------------------- runtime
FROM debian:bookworm-slim

# The user and group first, with fixed ids, so that postgresql-common's
# postinst finds and reuses them; no default cluster "main" (holdfast runs
# initdb itself). In the same layer: no apt lists, no JIT (llvmjit.so would
# pull in libLLVM and libz3, two thirds of the image; PostgreSQL turns JIT
# off quietly without its provider), no snakeoil key shared by every copy of
# the image.
RUN set -eux; \
    groupadd --system --gid 999 postgres; \
    useradd --system --uid 999 --gid 999 --no-create-home \
      --home-dir /var/lib/postgresql --shell /bin/bash \
      --comment 'PostgreSQL administrator' postgres; \
    install -d -o 999 -g 999 -m 0755 /var/lib/postgresql; \
    mkdir -p /etc/postgresql-common/createcluster.d; \
    echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/holdfast.conf; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      postgresql-15 postgresql-client-15 pgbackrest ca-certificates tzdata; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log; \
    rm -rf /etc/postgresql/15/main /var/lib/postgresql/15/main; \
    rm -rf /usr/lib/postgresql/15/lib/bitcode /usr/lib/postgresql/15/lib/llvmjit.so \
      /usr/lib/postgresql/15/lib/llvmjit_types.bc; \
    rm -f /usr/lib/*-linux-gnu/libLLVM-*.so* /usr/lib/*-linux-gnu/libz3.so*; \
    find /etc/ssl/certs -lname ssl-cert-snakeoil.pem -delete; \
    rm -f /etc/ssl/certs/ssl-cert-snakeoil.pem /etc/ssl/private/ssl-cert-snakeoil.key; \
    install -d -o 999 -g 999 -m 0750 /var/lib/holdfast; \
    install -d -o 999 -g 999 -m 0755 /etc/holdfast; \
    install -d -o 999 -g 999 -m 2775 /run/postgresql; \
    test "$(id -u postgres):$(id -g postgres)" = 999:999; \
    /usr/lib/postgresql/15/bin/postgres --version; \
    /usr/bin/pgbackrest version

COPY --from=build /out/holdfast /usr/local/bin/holdfast

ARG REVISION=unknown
ARG SOURCE=
LABEL org.opencontainers.image.title="holdfast" \
      org.opencontainers.image.description="holdfast PostgreSQL high-availability agent with PostgreSQL 15 and pgBackRest (Debian bookworm)" \
      org.opencontainers.image.source="$SOURCE" \
      org.opencontainers.image.revision="$REVISION" \
      org.opencontainers.image.base.name="debian:bookworm-slim"

ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8
USER 999:999
WORKDIR /var/lib/holdfast
EXPOSE 5432 8008
ENTRYPOINT ["/usr/local/bin/holdfast"]
CMD ["agent", "--config", "/etc/holdfast/holdfast.yaml"]
