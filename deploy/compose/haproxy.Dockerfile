# A stand-in for the official haproxy image, for machines that cannot pull it (no Docker Hub):
# Debian's HAProxy (2.6 on bookworm) on debian:bookworm-slim, used like the official image
# (configuration at /usr/local/etc/haproxy/haproxy.cfg, user haproxy, master-worker mode, and a
# command made of haproxy's options, as docker-compose.yml gives it).
#   docker build -f haproxy.Dockerfile -t keyraft-haproxy:local .
#   HAPROXY_IMAGE=keyraft-haproxy:local docker compose up -d
# Built and used by scripts/container_test.sh. With registry access the official image needs
# none of this.
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -m 0755 /usr/local/etc/haproxy
USER haproxy
# As the official image: SIGUSR1 is HAProxy's soft stop (finish the requests in flight).
STOPSIGNAL SIGUSR1
ENTRYPOINT ["haproxy", "-W", "-db"]
CMD ["-f", "/usr/local/etc/haproxy/haproxy.cfg"]
