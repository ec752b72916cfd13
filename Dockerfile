# Peregrine's container image: the binary and the compiled default rule
# packs on an empty (scratch) base, run as UID 65532, no shell. It works
# with a read-only root filesystem: state goes to /var/lib/peregrine (a
# volume), configuration comes from /etc/peregrine.
#
#   podman build -t localhost/peregrine:0.1.0 .      (or docker build)
#
# builds everything in the `build` stage. With a release binary and the rule
# modules already built on the host (`make test` or `make rules` and
# `cargo build --release -p peregrine`), skip that stage:
#
#   scripts/image-rootfs.sh target/image-rootfs
#   podman build --build-arg ROOTFS=prebuilt -t localhost/peregrine:0.1.0 .
ARG ROOTFS=build

FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends python3-venv python3-pip nodejs npm binutils ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/build-rules.sh \
    && cargo build --release -p peregrine \
    && scripts/image-rootfs.sh /rootfs

# The root filesystem scripts/image-rootfs.sh assembled on the host.
FROM scratch AS prebuilt
COPY target/image-rootfs/ /rootfs/

FROM ${ROOTFS} AS rootfs

FROM scratch
COPY --from=rootfs /rootfs/ /
# Inside a container the webhook must listen on every interface; the
# variable overrides `server.listen` (unset it to use the config's).
ENV PATH=/usr/bin HOME=/var/lib/peregrine PEREGRINE_LISTEN=0.0.0.0:8765
USER 65532:65532
WORKDIR /var/lib/peregrine
VOLUME ["/var/lib/peregrine"]
EXPOSE 8765
ENTRYPOINT ["/usr/bin/peregrine"]
CMD ["serve"]
