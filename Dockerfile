# syntax=docker/dockerfile:1
#
# multicsi container image: one binary that serves the CSI controller and node
# plugin of every backend, plus the host tools the node plugin drives.
#
#   docker build -t multicsi:dev .
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) -t multicsi:0.1.0 .

############################ build ############################
FROM rust:1-bookworm AS build

# libcryptsetup's headers and libclang for its binding: the package list's
# `build` job.
WORKDIR /src
COPY scripts/lib/packages.tsv /tmp/packages.tsv
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      $(awk '{ sub(/#.*/, "") } NF >= 3 { for (i = 3; i <= NF; i++) if ($i == "build") { print $2; break } }' /tmp/packages.tsv | sort -u) \
 && rm -rf /var/lib/apt/lists/*
COPY . .

# --locked: build exactly the dependency versions of Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked \
 && install -D -m 0755 target/release/multicsi /out/multicsi \
 && install -D -m 0755 target/release/multicsi-luks /out/multicsi-luks

############################ runtime ############################
FROM debian:bookworm-slim

# The host tools the driver runs on a node (filesystems, mounts, iSCSI and
# multipath, udev, kmod), libcryptsetup (for the multicsi-luks helper, which
# does the work on encrypted volumes) and CA certificates for the cloud APIs: the
# package list's `node` job, the same list the tests check.
COPY scripts/lib/packages.tsv /tmp/packages.tsv
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      $(awk '{ sub(/#.*/, "") } NF >= 3 { for (i = 3; i <= NF; i++) if ($i == "node") { print $2; break } }' /tmp/packages.tsv | sort -u) \
 && rm -rf /var/lib/apt/lists/* /tmp/packages.tsv

COPY --from=build /out/multicsi /out/multicsi-luks /usr/local/bin/

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="multicsi" \
      org.opencontainers.image.description="Kubernetes CSI driver for hostpath, cloudscale.ch, Civo and Equinix Metal block storage" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

ENTRYPOINT ["/usr/local/bin/multicsi"]
CMD ["--help"]
