# Multi-stage build: compile in the Rust image, run on a slim Debian with
# only the binary, as an unprivileged user, with history on the /data volume.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin parlor \
 && cp target/release/parlor /parlor

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin parlor \
 && mkdir -p /data && chown parlor /data
COPY --from=build /parlor /usr/local/bin/parlor
USER parlor
VOLUME /data
ENV PARLOR_ADDR=0.0.0.0:8080 PARLOR_DATA_DIR=/data
EXPOSE 8080
# bash's /dev/tcp keeps the image free of curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 && printf "GET /healthz HTTP/1.0\r\n\r\n" >&3 && head -n1 <&3 | grep -q " 200 "'
ENTRYPOINT ["/usr/local/bin/parlor"]
CMD ["serve"]
