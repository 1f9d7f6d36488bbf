# The `eventforge` command (worker, call, pub, sub) and the distributed
# workers demander, in a small runtime image.
#
#   docker build -t eventforge .
#   docker run --rm -p 9090:9090 eventforge worker tcp://0.0.0.0:9090 --builtin echo

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p eventforge-worker --bin eventforge \
 && cargo build --release --locked --example 09_distributed_workers \
 && mkdir -p /out \
 && cp target/release/eventforge target/release/examples/09_distributed_workers /out/

FROM debian:bookworm-slim AS runtime
# python3 runs the example handlers in /opt/eventforge/handlers.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home eventforge
COPY --from=build /out/eventforge /out/09_distributed_workers /usr/local/bin/
COPY examples/handlers /opt/eventforge/handlers
USER eventforge
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/eventforge"]
CMD ["--help"]
