# Caddy with ByteProxy, built from this checkout in the usual caddy:builder
# pattern (build_test.go runs the same xcaddy command outside Docker):
#
#	docker build -t byteproxy .
#	docker run -p 3420:3420 -e PROXY_API_KEY=change-me -e GITHUB_TOKEN byteproxy
#
# The image serves Caddyfile.example (/etc/caddy/Caddyfile); mount your own
# Caddyfile there to change it. Caddy's storage (runtime services) is /data.
ARG CADDY_VERSION=2.11.9

FROM caddy:${CADDY_VERSION}-builder AS builder
# go.mod may ask for a newer Go than the image has: let go fetch it.
ENV GOTOOLCHAIN=auto
COPY . /src/byteproxy
# @v0.2.0 only names the version Go records for the module (the build
# info that `/version` reports); the code is the local copy.
RUN xcaddy build --with github.com/byteproxy/byteproxy@v0.2.0=/src/byteproxy --output /usr/bin/caddy

FROM caddy:${CADDY_VERSION}
# The byteproxy binary's collector setting (docs/OPERATIONS.md, Garbage
# collector); the caddy binary built above would run at Go's 100.
ENV GOGC=200
COPY --from=builder /usr/bin/caddy /usr/bin/caddy
COPY Caddyfile.example /etc/caddy/Caddyfile
EXPOSE 3420
