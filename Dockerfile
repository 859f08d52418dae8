# powerbi-tokend in a distroless image: no shell, no package manager, uid/gid 65532.
#
#   docker build -t powerbi-tokend:0.1.0 .
#   docker run --rm -v "$PWD/config.toml:/etc/powerbi-tokend/config.toml:ro" -p 9464:9464 powerbi-tokend:0.1.0
#
# (with `[server] listen = "0.0.0.0:9464"` in that config.toml for the port to be reachable). The
# tag is the crate's version, which the Kubernetes manifests name (docs/kubernetes.md pushes it to
# a registry).
#
# The binary has no `demo` subcommand and no simulated Entra ID (`--no-default-features`); it
# links only glibc (libc, libm) and libgcc_s, which the distroless "cc" image carries;
# TLS is rustls on aws-lc-rs, compiled in, and the CA certificates come with the image.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so that a source change does not rebuild them: a stub crate with the real
# manifest and lock file. The workspace names the simulator (sim/) as a member, so its manifest
# comes too, with an empty stub library that stays: the image is built without default features,
# that is without `demo` and the simulator, which is then never compiled.
COPY Cargo.toml Cargo.lock ./
COPY sim/Cargo.toml ./sim/
RUN mkdir -p src sim/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs sim/src/lib.rs \
    && cargo build --release --locked --no-default-features -p powerbi-tokend --bin powerbi-tokend \
    && rm -rf src
COPY src ./src
# Touch the sources so cargo rebuilds the crate rather than trusting the stub's timestamps.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --no-default-features -p powerbi-tokend --bin powerbi-tokend \
    && install -D -m 0755 target/release/powerbi-tokend /out/powerbi-tokend

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/powerbi-tokend /usr/local/bin/powerbi-tokend
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/powerbi-tokend"]
CMD ["run", "--config", "/etc/powerbi-tokend/config.toml"]
