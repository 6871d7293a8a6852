-- Bench data shaped like the two tables that make most of a self-hosted Sentry's Postgres:
--   nodestore_node          event payloads: JSON text of ~3.9 KB on average, which zstd shrinks
--                           ~3.5x (keys, paths and code lines repeat; ids, hashes, line numbers
--                           and an opaque request body do not)
--   sentry_groupedmessage   issues, with the columns and indexes Sentry's issue lists use
--
--   psql -v ON_ERROR_STOP=1 -v nodes=26000 -v groups=100000 -d DB -f sentry_like_db.sql
--
-- nodes and groups default to 260000 and 1000000: a database of ~1.1 GiB; 26000 and 100000 make
-- ~120 MiB. Everything is made in the first schema of search_path (the benches give it a schema
-- `bench` of its own, emptied first).
\if :{?nodes}
\else
  \set nodes 260000
\endif
\if :{?groups}
\else
  \set groups 1000000
\endif

CREATE TABLE IF NOT EXISTS nodestore_node (
    id varchar(40) PRIMARY KEY,
    data text NOT NULL,
    "timestamp" timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS sentry_groupedmessage (
    id bigserial PRIMARY KEY,
    project_id bigint NOT NULL,
    logger varchar(64) NOT NULL DEFAULT '',
    level integer NOT NULL,
    message text NOT NULL,
    view varchar(200),
    platform varchar(64),
    status integer NOT NULL DEFAULT 0,
    substatus integer,
    times_seen integer NOT NULL DEFAULT 1,
    last_seen timestamptz NOT NULL,
    first_seen timestamptz NOT NULL,
    resolved_at timestamptz,
    active_at timestamptz,
    num_comments integer NOT NULL DEFAULT 0,
    score integer NOT NULL DEFAULT 0,
    is_public boolean NOT NULL DEFAULT false,
    short_id bigint,
    type integer NOT NULL DEFAULT 1,
    priority integer,
    first_release_id bigint
);

-- One event payload; `n` picks the project, release, frames, ... The volatile parts come from
-- random(), so two loads differ byte for byte but not in size or compressibility.
CREATE OR REPLACE FUNCTION bench_event_payload(n bigint) RETURNS text LANGUAGE sql VOLATILE AS $$
SELECT json_build_object(
    'event_id', md5('event:' || n),
    'project', n % 500 + 1,
    'platform', 'python',
    'level', (ARRAY['error', 'error', 'error', 'warning', 'fatal'])[1 + n % 5],
    'timestamp', 1710000000 + n * 7,
    'release', 'backend@24.' || (n % 12 + 1) || '.' || (n % 29),
    'environment', CASE WHEN n % 10 = 0 THEN 'staging' ELSE 'production' END,
    'server_name', 'web-' || (n % 48) || '.prod.internal',
    'transaction', (ARRAY[
        '/api/0/organizations/{organization_id_or_slug}/issues/',
        '/api/0/projects/{organization_id_or_slug}/{project_id_or_slug}/events/',
        '/api/{project_id}/envelope/',
        'sentry.tasks.store.save_event'])[1 + n % 4],
    'message', 'TypeError: unsupported operand type(s) for +: ''int'' and ''NoneType'' in '
        || substr(md5('msg:' || n), 1, 12),
    'tags', json_build_array(
        json_build_array('environment', CASE WHEN n % 10 = 0 THEN 'staging' ELSE 'production' END),
        json_build_array('runtime', 'CPython 3.12.' || (n % 8)),
        json_build_array('trace', md5('trace:' || n))),
    'contexts', json_build_object(
        'os', json_build_object('name', 'Linux', 'version', '6.1.0-' || (n % 30) || '-amd64'),
        'runtime', json_build_object('name', 'CPython', 'version', '3.12.' || (n % 8)),
        'trace', json_build_object(
            'trace_id', md5('trace:' || n),
            'span_id', substr(md5(random()::text), 1, 16))),
    'exception', json_build_object('values', json_build_array(json_build_object(
        'type', 'TypeError',
        'mechanism', json_build_object('type', 'django', 'handled', false),
        'stacktrace', json_build_object('frames', (
            SELECT json_agg(json_build_object(
                'filename', 'sentry/' || f.module || '.py',
                'function', f.function,
                'lineno', 1 + floor(random() * 1500)::int,
                'in_app', k % 4 <> 0,
                'context_line', f.line,
                'vars', json_build_object(
                    'self', '<' || f.function || ' object at 0x7f' || substr(md5(random()::text), 1, 10) || '>',
                    'key', substr(md5(n || ':' || k), 1, 24),
                    'elapsed', round(random()::numeric * 1000, 3))
            ) ORDER BY k)
            FROM generate_series(1, 4 + (n % 7)::int) AS k,
            LATERAL (SELECT
                (ARRAY['api/bases/organization', 'api/endpoints/group_details', 'models/group',
                       'eventstore/models', 'ingest/consumer/processors', 'tasks/post_process',
                       'utils/safe', 'db/models/manager/base', 'nodestore/django/backend'
                      ])[1 + (n + 3 * k) % 9] AS module,
                (ARRAY['dispatch', 'handle_exception', 'get', 'process_event', 'save_event',
                       'post_process_group', 'safe_execute', 'get_from_cache', '_get_bytes',
                       'convert_args', 'get_response'])[1 + (n + 5 * k) % 11] AS function,
                (ARRAY['        response = handler(request, *args, **kwargs)',
                       '            return func(*args, **kwargs)',
                       '        total = self.times_seen + delta',
                       '    data = self.nodestore.get(node_id, subkey=subkey)',
                       '        with metrics.timer("tasks.post_process.run_post_process_job"):',
                       '                raise TypeError(message)',
                       '    for event in batch:',
                       '        return self.model.objects.get(**kwargs)'
                      ])[1 + (n + k) % 8] AS line
            ) AS f))))),
    'user', json_build_object(
        'id', substr(md5('user:' || n % 20000), 1, 12),
        'ip_address', '10.' || (n % 200) || '.' || (n / 200 % 250) || '.' || (n % 11 + 1)),
    'request', json_build_object(
        'method', 'POST',
        'url', 'https://sentry.example.com/api/0/issues/' || (n % 100000) || '/',
        -- an opaque body: random bytes, base64 (no line breaks), what keeps zstd near 3.5x
        'data', (SELECT translate(encode(decode(string_agg(md5(random()::text), ''), 'hex'), 'base64'), E'\n', '')
                 FROM generate_series(1, 36 + (n % 7)::int)))
)::text
$$;

TRUNCATE nodestore_node;
INSERT INTO nodestore_node (id, data, "timestamp")
SELECT md5('node:' || n), bench_event_payload(n), now() - (n % 7776000) * interval '1 second'
FROM generate_series(1, :nodes) AS n;

INSERT INTO sentry_groupedmessage (
    project_id, logger, level, message, view, platform, status, substatus, times_seen,
    last_seen, first_seen, resolved_at, active_at, num_comments, score, short_id, type, priority,
    first_release_id)
SELECT
    g % 500 + 1,
    (ARRAY['', 'django.request', 'celery.worker', 'sentry.errors'])[1 + g % 4],
    (ARRAY[10, 20, 30, 40, 50])[1 + g % 5],
    'TypeError: unsupported operand type(s) in ' || substr(md5('issue:' || g), 1, 14),
    'sentry.tasks.post_process in post_process_group_' || (g % 250),
    'python',
    g % 3,
    CASE WHEN g % 3 = 0 THEN 7 END,
    1 + floor(random() * 20000)::int,
    last_seen,
    last_seen - random() * interval '45 days',
    CASE WHEN g % 3 = 1 THEN last_seen END,
    last_seen - interval '1 hour',
    (g % 17 = 0)::int,
    floor(random() * 2000000000)::int,
    g / 500 + 1,
    CASE WHEN g % 9 = 0 THEN 1001 ELSE 1 END,
    (ARRAY[25, 50, 75])[1 + g % 3],
    g % 900 + 1
FROM (SELECT g, now() - random() * interval '90 days' AS last_seen
      FROM generate_series(1, :groups) AS g) AS issue;

CREATE INDEX IF NOT EXISTS nodestore_node_timestamp ON nodestore_node ("timestamp");
CREATE UNIQUE INDEX IF NOT EXISTS sentry_groupedmessage_project_short_id
    ON sentry_groupedmessage (project_id, short_id);
CREATE INDEX IF NOT EXISTS sentry_groupedmessage_project_status_last_seen
    ON sentry_groupedmessage (project_id, status, last_seen, id);
CREATE INDEX IF NOT EXISTS sentry_groupedmessage_first_seen ON sentry_groupedmessage (first_seen);
CREATE INDEX IF NOT EXISTS sentry_groupedmessage_last_seen ON sentry_groupedmessage (last_seen);
CREATE INDEX IF NOT EXISTS sentry_groupedmessage_first_release ON sentry_groupedmessage (first_release_id);

VACUUM ANALYZE;
CHECKPOINT;

SELECT pg_database_size(current_database()) AS database_bytes,
       pg_size_pretty(pg_database_size(current_database())) AS database_size;
SELECT c.relname AS "table", pg_size_pretty(pg_total_relation_size(c.oid)) AS size,
       pg_total_relation_size(c.oid) AS bytes
FROM pg_class AS c
WHERE c.oid IN ('nodestore_node'::regclass, 'sentry_groupedmessage'::regclass);
