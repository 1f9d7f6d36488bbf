#!/usr/bin/env bash
# Makes sure Redis (127.0.0.1:6379) and NATS (127.0.0.1:4222) answer, as the
# broker tests expect. Silent and quick when both already run; otherwise
# installs what is missing (Debian packages), starts it with the commands of
# the project's service notes, and waits a bounded time until it answers.
# Exits non-zero, saying why, when a broker cannot be brought up.
set -euo pipefail

WAIT_SECONDS=${BROKERS_WAIT_SECONDS:-30}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

redis_answers() {
    command -v redis-cli >/dev/null 2>&1 &&
        [ "$(timeout 2 redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]
}

nats_answers() {
    # A NATS server greets every connection with INFO.
    [ "$(timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/4222 && head -c 4 <&3' 2>/dev/null)" = "INFO" ]
}

apt_updated=no
install_packages() {
    if [ "$apt_updated" = no ]; then
        echo "brokers: apt-get update" >&2
        as_root apt-get update -qq >/dev/null
        apt_updated=yes
    fi
    echo "brokers: installing $*" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

start_redis() {
    if ! [ -x /usr/bin/redis-server ] || ! command -v redis-cli >/dev/null 2>&1; then
        install_packages redis-server
    fi
    as_root mkdir -p /var/lib/redis /var/log/redis
    echo "brokers: starting redis-server on 127.0.0.1:6379" >&2
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
}

start_nats() {
    if ! [ -x /usr/sbin/nats-server ]; then
        install_packages nats-server
    fi
    as_root mkdir -p /var/lib/nats-server
    echo "brokers: starting nats-server on 127.0.0.1:4222" >&2
    as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
}

wait_for() {
    local name=$1 check=$2 deadline=$((SECONDS + WAIT_SECONDS))
    until "$check"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "brokers: $name does not answer after ${WAIT_SECONDS}s" >&2
            return 1
        fi
        sleep 0.2
    done
    echo "brokers: $name answers" >&2
}

start_nats_by_pidfile() {
    # start-stop-daemon --exec takes any nats-server process (one a test
    # started on another port, say) for the service: match a pidfile instead.
    echo "brokers: another nats-server process runs; starting ours by pidfile" >&2
    as_root start-stop-daemon --start --oknodo --background --make-pidfile --pidfile /run/eventforge-nats-server.pid --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
}

redis_answers || { start_redis; wait_for redis redis_answers; }
if ! nats_answers; then
    start_nats
    if ! WAIT_SECONDS=5 wait_for nats nats_answers 2>/dev/null; then
        start_nats_by_pidfile
        wait_for nats nats_answers
    fi
fi
