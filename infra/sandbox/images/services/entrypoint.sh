#!/bin/bash
# Starts one sandbox service bound to 127.0.0.1 on the port from the environment, the way the
# official images' entrypoints do (init on an empty volume, then exec the server).
set -euo pipefail
service=${1:?usage: sandbox-service postgres|redis|clickhouse}

case "$service" in
postgres)
    : "${PGPORT:?}" "${POSTGRES_USER:?}" "${POSTGRES_DB:?}"
    data=/var/lib/postgresql/data
    mkdir -p "$data" /var/run/postgresql
    chown -R postgres:postgres "$data" /var/run/postgresql
    chmod 0700 "$data"
    if [ ! -s "$data/PG_VERSION" ]; then
        pwfile=$(mktemp)
        printf '%s' "${POSTGRES_PASSWORD:?}" >"$pwfile"
        chown postgres "$pwfile"
        setpriv --reuid=postgres --regid=postgres --init-groups \
            initdb -D "$data" -U "$POSTGRES_USER" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
            --auth-local=trust --auth-host=scram-sha-256 >/dev/null
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
    exec redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no
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
