#!/usr/bin/env bash
# Start the local services the tests use, if they are installed but not running, and
# install Debian's chromium (browser tests), promtool (the alert rules' unit tests, from
# Debian's prometheus package) and nginx (tests/production/test_nginx.py runs the shipped
# configuration; the test starts its own, the package's service is not started) when they are
# missing. Used by .ci/run;
# safe to run by hand. Starts nothing that is already listening.
set -uo pipefail

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # port, name
  for _ in $(seq 1 30); do listening "$1" && return 0; sleep 1; done
  echo "ensure-services: $2 did not come up on port $1" >&2
  return 1
}

if ! listening 5432 && command -v pg_ctlcluster >/dev/null; then
  echo "ensure-services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
  wait_for 5432 PostgreSQL
fi

if ! listening 6379 && command -v redis-server >/dev/null; then
  echo "ensure-services: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  wait_for 6379 Redis
fi

if ! listening 5672 && command -v rabbitmq-server >/dev/null; then
  echo "ensure-services: starting RabbitMQ (the broker fault test's alternative broker)"
  rabbitmq-server -detached || true
  wait_for 5672 RabbitMQ
fi

if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "ensure-services: installing chromium for the browser test"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
    || echo "ensure-services: could not install chromium" >&2
fi
if ! command -v promtool >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "ensure-services: installing promtool for the alert rules' tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null || echo "ensure-services: could not install promtool" >&2
fi
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ] && command -v apt-get >/dev/null \
  && [ "$(id -u)" = 0 ]; then
  echo "ensure-services: installing nginx for the reverse-proxy test"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    nginx >/dev/null || echo "ensure-services: could not install nginx" >&2
fi
exit 0
