#!/bin/bash
# Starts one sandbox service bound to 127.0.0.1 on the port from the environment, the way the
# official images' entrypoints do (init on an empty volume, then exec the server). The same script
# runs in the bookworm image (postgres, redis, clickhouse) and the trixie one (valkey, pgbouncer,
# nginx).
set -euo pipefail
service=${1:?usage: sandbox-service postgres|redis|clickhouse|pgbouncer|nginx|placeholder}

case "$service" in
postgres)
    : "${PGPORT:?}" "${POSTGRES_USER:?}" "${POSTGRES_DB:?}"
    if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then # like the official image: no secret in the env
        POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
    fi
    data=/var/lib/postgresql/data
    mkdir -p "$data" /var/run/postgresql
    chown -R postgres:postgres "$data" /var/run/postgresql
    chmod 0700 "$data"
    if [ ! -s "$data/PG_VERSION" ]; then
        pwfile=$(mktemp)
        auth=scram-sha-256
        if [ "${POSTGRES_HOST_AUTH_METHOD:-}" = trust ]; then
            auth=trust # like the official image (self-hosted runs Postgres this way)
            printf 'unused' >"$pwfile"
        else
            printf '%s' "${POSTGRES_PASSWORD:?}" >"$pwfile"
        fi
        chown postgres "$pwfile"
        setpriv --reuid=postgres --regid=postgres --init-groups \
            initdb -D "$data" -U "$POSTGRES_USER" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
            --auth-local=trust --auth-host="$auth" >/dev/null
        rm -f "$pwfile"
        setpriv --reuid=postgres --regid=postgres --init-groups \
            pg_ctl -D "$data" -o "-c listen_addresses='' -p $PGPORT" -w start >/dev/null
        if [ "$POSTGRES_DB" != postgres ]; then
            setpriv --reuid=postgres --regid=postgres --init-groups \
                createdb -h /var/run/postgresql -p "$PGPORT" -U "$POSTGRES_USER" "$POSTGRES_DB"
        fi
        setpriv --reuid=postgres --regid=postgres --init-groups pg_ctl -D "$data" -m fast -w stop >/dev/null
    fi
    exec setpriv --reuid=postgres --regid=postgres --init-groups \
        postgres -D "$data" -c listen_addresses=127.0.0.1 -p "$PGPORT" \
        -c unix_socket_directories=/var/run/postgresql -c shared_buffers=128MB
    ;;
redis)
    : "${REDIS_PORT:?}"
    server=$(command -v valkey-server || command -v redis-server)
    exec "$server" --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no
    ;;
pgbouncer)
    : "${DB_PORT:?}" "${LISTEN_PORT:?}"
    mkdir -p /etc/pgbouncer /var/run/pgbouncer
    cat >/etc/pgbouncer/pgbouncer.ini <<INI
[databases]
* = host=127.0.0.1 port=$DB_PORT
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $LISTEN_PORT
auth_type = trust
auth_file = /etc/pgbouncer/userlist.txt
pool_mode = transaction
admin_users = postgres
max_client_conn = 1000
unix_socket_dir =
INI
    echo '"postgres" ""' >/etc/pgbouncer/userlist.txt
    chown -R postgres /etc/pgbouncer /var/run/pgbouncer
    exec setpriv --reuid=postgres --regid=postgres --init-groups pgbouncer /etc/pgbouncer/pgbouncer.ini
    ;;
nginx)
    : "${SENTRY_BIND:?}" "${WEB_PORT:?}" "${RELAY_PORT:?}"
    sed -e "s/\${SENTRY_BIND}/$SENTRY_BIND/g" -e "s/\${WEB_PORT}/$WEB_PORT/g" \
        -e "s/\${RELAY_PORT}/$RELAY_PORT/g" \
        /etc/nginx/nginx.conf.template >/tmp/nginx.conf
    exec nginx -c /tmp/nginx.conf -g 'daemon off;'
    ;;
placeholder)
    # a service the stand-in does not need, present so the stack has the layout's shape
    trap 'exit 0' TERM INT
    while :; do sleep 60 & wait $!; done
    ;;
clickhouse)
    : "${CLICKHOUSE_PORT:?}" "${CLICKHOUSE_HTTP_PORT:?}" "${CLICKHOUSE_INTERSERVER_PORT:?}"
    mkdir -p /etc/clickhouse-server/config.d /etc/clickhouse-client /var/lib/clickhouse
    cat >/etc/clickhouse-server/config.d/sandbox.xml <<XML
<yandex>
    <listen_host>127.0.0.1</listen_host>
    <http_port>$CLICKHOUSE_HTTP_PORT</http_port>
    <tcp_port>$CLICKHOUSE_PORT</tcp_port>
    <interserver_http_port>$CLICKHOUSE_INTERSERVER_PORT</interserver_http_port>
    <logger><console>1</console><level>warning</level></logger>
</yandex>
XML
    cat >/etc/clickhouse-client/config.xml <<XML
<config><port>$CLICKHOUSE_PORT</port></config>
XML
    chown -R clickhouse:clickhouse /var/lib/clickhouse
    exec setpriv --reuid=clickhouse --regid=clickhouse --init-groups \
        clickhouse-server --config-file=/etc/clickhouse-server/config.xml
    ;;
*)
    echo "unknown sandbox service: $service" >&2
    exit 2
    ;;
esac
