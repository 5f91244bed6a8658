# spotd: multi-stage build. Mirrors the README: `swift build -c release`, then `spotd serve`.
# (No Docker engine runs on the development machines; this file is kept faithful to the README but was not built here.)

# ---- build ----
FROM swift:6.1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libsqlite3-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Package.swift ./
RUN swift package resolve
COPY Sources ./Sources
COPY Tests ./Tests
# The migrations are compiled into the binary (Sources/SpotCore/Store/EmbeddedMigrations.swift).
RUN swift build -c release --product spotd --static-swift-stdlib \
    && install -D "$(swift build -c release --show-bin-path)/spotd" /out/usr/local/bin/spotd

# ---- run ----
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libsqlite3-0 libssl3 libcurl4 ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/spotd --create-home spotd
COPY --from=build /out/ /
USER spotd
WORKDIR /var/lib/spotd
VOLUME ["/var/lib/spotd"]
# Listening beyond loopback needs auth: pass SPOTD_ADMIN_TOKEN at run time.
ENV SPOTD_HOST=0.0.0.0 SPOTD_PORT=8080 SPOTD_DB=/var/lib/spotd/spotd.sqlite
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD ["/usr/bin/env", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q 200 <&3"]
ENTRYPOINT ["spotd"]
CMD ["serve"]
