#!/usr/bin/env bash
# SANDBOX install.sh, standing in for getsentry/self-hosted's (not it): the steps of the real one
# that an upgrade relies on, against the sandbox's Sentry stand-in. Like the real one it refuses to
# guess: without --skip-user-creation it would create a user, without a report choice it prompts
# (no TTY: it fails); it turns the stack off, makes sure the external volumes exist, starts the
# dependencies, runs `snuba-api bootstrap --force` and `sentry upgrade --noinput --create-kafka-topics`, then tells the operator
# to run `docker compose up --wait`.
set -euo pipefail
cd "$(dirname "$0")"

skip_user=0
report=""
for arg in "$@"; do
  case "$arg" in
    --skip-user-creation) skip_user=1 ;;
    --no-report-self-hosted-issues) report=no ;;
    --report-self-hosted-issues) report=yes ;;
    --apply-automatic-config-updates) ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
if [ -z "$report" ]; then
  read -r -p "Report self-hosted issues to Sentry? [y/n] " report
fi

dc=(docker compose --ansi never --env-file .env)
[ -f .env.custom ] && dc+=(--env-file .env.custom)
version=$(sed -n 's/^SENTRY_VERSION=//p' .env)
echo "Installing the Sentry stand-in $version"

echo "▶ Turning things off ..."
"${dc[@]}" down -t 30 --remove-orphans

echo "▶ Creating volumes for persistent storage ..."
for volume in sentry-data sentry-postgres sentry-redis sentry-clickhouse sentry-seaweedfs; do
  docker volume create "$volume" >/dev/null
done

# `up -d --wait`, its wait done by running each container's healthcheck now: Docker would run it
# first a whole interval (30 s, as self-hosted's) after the start
up_ready() {
  "${dc[@]}" up -d "$@"
  for id in $("${dc[@]}" ps -q "$@"); do
    test=$(docker inspect -f '{{if .Config.Healthcheck}}{{index .Config.Healthcheck.Test 1}}{{end}}' "$id")
    for _ in $(seq 360); do
      [ "$(docker inspect -f '{{.State.Status}}' "$id")" = running ] || { echo "container $id is not running" >&2; exit 1; }
      if [ -z "$test" ] || docker exec "$id" sh -c "$test" >/dev/null 2>&1; then continue 2; fi
      sleep 0.5
    done
    echo "container $id not ready" >&2
    exit 1
  done
}

echo "▶ Setting up / migrating database ..."
up_ready postgres pgbouncer redis clickhouse seaweedfs
echo "▶ Bootstrapping and migrating Snuba ..."
"${dc[@]}" run --rm -T snuba-api bootstrap --force
"${dc[@]}" run --rm -T web upgrade --noinput --create-kafka-topics
if [ "$skip_user" = 0 ]; then
  "${dc[@]}" run --rm web createuser
fi

echo "You're all done! Run the following command to get Sentry running:"
echo "  docker compose up --wait"
