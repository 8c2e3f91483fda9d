"""Database schema: versioned migrations and the daily partitions of ``sensores``.

Migrations run at start under a PostgreSQL advisory lock, so several replicas starting at
once apply each one exactly once. Partition DDL runs in its own short transaction, never
inside a batch: ``CREATE TABLE … PARTITION OF`` locks the parent, and holding that lock
together with a COPY's lock in two replicas would deadlock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta

import psycopg2.extensions
from psycopg2 import sql

from iot_common.logging import get_logger
from iot_consumer.alerts.store import MIGRATION_SQL as ALERTS_MIGRATION_SQL
from iot_consumer.rollups import FLEET_REBUILD_SQL, REBUILD_SQL

log = get_logger(__name__)

# Any fixed 64-bit number; shared by every process that migrates this database.
MIGRATION_LOCK_KEY = 0x10_7_3017_0001
PARTITION_LOCK_KEY = 0x10_7_3017_0002

# Least privilege: each service logs in as its own role. migrate() creates the roles that are
# missing (when the owner may: CREATEROLE) and grants each one only what its service does;
# ``iot-consumer migrate`` also sets their passwords (set_role_passwords).
SERVICE_ROLES = ("iot_consumer", "iot_exporter", "iot_dashboard")
# These only read: their transactions are read-only by default, so even a bug cannot write.
READ_ONLY_ROLES = ("iot_exporter", "iot_dashboard")

GRANTS = """
DO $grants$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'iot_consumer') THEN
        GRANT SELECT ON schema_migrations TO iot_consumer;
        GRANT INSERT ON sensores TO iot_consumer;
        GRANT INSERT ON dead_letters TO iot_consumer;
        GRANT USAGE ON SEQUENCE dead_letters_id_seq TO iot_consumer;
        GRANT SELECT, INSERT, UPDATE ON consumer_positions TO iot_consumer;
        GRANT EXECUTE ON FUNCTION iot_ensure_sensores_partition(date) TO iot_consumer;
        -- rollups, updated with the rows; retention drops expired partitions through a function
        GRANT SELECT, INSERT, UPDATE ON sensores_minuto, sensores_hora TO iot_consumer;
        GRANT EXECUTE ON FUNCTION iot_drop_expired_partitions(regclass, timestamptz) TO iot_consumer;
        -- alerts: the silence rule reads each sensor's newest reading time after a restart, and
        -- `iot-consumer verify` (run in the consumer's pod) counts rows per offset: those columns
        -- only, the consumer never reads values or payloads back
        GRANT SELECT (sensor_id, "timestamp", kafka_partition, kafka_offset) ON sensores TO iot_consumer;
        GRANT SELECT (consumer_group, topic, kafka_partition, kafka_offset, kafka_last_offset, replayed_at)
            ON dead_letters TO iot_consumer;
        GRANT SELECT, INSERT, UPDATE ON alertas TO iot_consumer;
        GRANT SELECT, INSERT, UPDATE, DELETE ON alert_states TO iot_consumer;
        -- the outbox publisher locks what it sends (SELECT ... FOR UPDATE needs UPDATE), deletes it once acked
        GRANT SELECT, INSERT, UPDATE, DELETE ON alert_outbox TO iot_consumer;
        GRANT USAGE ON SEQUENCE alert_outbox_id_seq TO iot_consumer;
        -- offset gaps: the consumer records each position it moves past a gap in the log
        GRANT SELECT, INSERT ON offset_gaps TO iot_consumer;
        GRANT USAGE ON SEQUENCE offset_gaps_id_seq TO iot_consumer;
        GRANT EXECUTE ON FUNCTION iot_expire_dead_letters(timestamptz, integer) TO iot_consumer;
        GRANT SELECT ON retention_policy TO iot_consumer;
        -- fleet rollups, updated with the rows; expired with the per-sensor rollups through a function
        GRANT SELECT, INSERT, UPDATE ON sensores_frota_minuto, sensores_frota_hora TO iot_consumer;
        GRANT EXECUTE ON FUNCTION iot_expire_fleet_rollups() TO iot_consumer;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'iot_exporter') THEN
        GRANT SELECT ON sensores, sensores_minuto, sensores_hora TO iot_exporter;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'iot_dashboard') THEN
        GRANT SELECT ON sensores, sensores_minuto, sensores_hora, alertas, dead_letters, consumer_positions,
            offset_gaps, sensores_frota_minuto, sensores_frota_hora TO iot_dashboard;
    END IF;
END
$grants$;
"""

# The body of iot_drop_expired_partitions that detaches and drops (migrations 5 and 7 share it).
_DROP_EXPIRED_LOOP = """            PERFORM set_config('lock_timeout', '5s', true);
            FOR part IN
                SELECT c.oid::regclass AS child, c.relname::text AS name,
                       substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \\(''([^'']+)''\\)')::timestamptz AS upper
                FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = parent
                ORDER BY 3
            LOOP
                CONTINUE WHEN part.upper IS NULL OR part.upper > keep_from;
                partition_name := part.name;
                upper_bound := part.upper;
                bytes := pg_total_relation_size(part.child);
                EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', parent, part.child);
                EXECUTE format('DROP TABLE %s', part.child);
                RETURN NEXT;
            END LOOP;
"""

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "readings, dead letters, stored Kafka positions",
        """
        CREATE TABLE sensores (
            sensor_id        uuid             NOT NULL,
            "timestamp"      timestamptz      NOT NULL,
            temperatura      double precision NOT NULL,
            umidade          double precision NOT NULL,
            kafka_partition  integer          NOT NULL,
            kafka_offset     bigint           NOT NULL,
            ingested_at      timestamptz      NOT NULL DEFAULT now()
        ) PARTITION BY RANGE ("timestamp");
        COMMENT ON TABLE sensores IS 'Sensor readings, one row per valid Kafka message; partitioned by UTC day';

        -- "one sensor over a time range" and "latest reading per sensor" (DISTINCT ON / LIMIT 1)
        CREATE INDEX sensores_sensor_time_idx ON sensores (sensor_id, "timestamp" DESC);

        CREATE TABLE dead_letters (
            id                bigserial    PRIMARY KEY,
            consumer_group    text         NOT NULL,
            topic             text         NOT NULL,
            kafka_partition   integer      NOT NULL,
            kafka_offset      bigint       NOT NULL,
            kafka_timestamp   timestamptz,
            message_key       bytea,
            payload           bytea,
            payload_size      integer      NOT NULL,
            payload_truncated boolean      NOT NULL,
            reason            text         NOT NULL,
            detail            text         NOT NULL,
            dead_lettered_at  timestamptz  NOT NULL DEFAULT now(),
            UNIQUE (consumer_group, topic, kafka_partition, kafka_offset)
        );
        COMMENT ON TABLE dead_letters IS 'Messages that are not valid readings, with the raw bytes and the reason';
        CREATE INDEX dead_letters_time_idx ON dead_letters (dead_lettered_at);

        CREATE TABLE consumer_positions (
            consumer_group   text        NOT NULL,
            topic            text        NOT NULL,
            kafka_partition  integer     NOT NULL,
            next_offset      bigint      NOT NULL CHECK (next_offset >= 0),
            updated_at       timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (consumer_group, topic, kafka_partition)
        );
        COMMENT ON TABLE consumer_positions IS
            'Next Kafka offset to read per partition, written in the same transaction as the rows';
        """,
    ),
    (
        2,
        "partition creation without DDL rights",
        """
        -- Replicas create daily partitions through this function, so the consumer's role
        -- needs no ownership or DDL right on sensores (SECURITY DEFINER: runs as the owner).
        CREATE FUNCTION iot_ensure_sensores_partition(day date) RETURNS void
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
        BEGIN
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I PARTITION OF sensores FOR VALUES FROM (%L) TO (%L)',
                'sensores_' || to_char(day, 'YYYYMMDD'),
                (day::timestamp AT TIME ZONE 'UTC'), ((day + 1)::timestamp AT TIME ZONE 'UTC'));
        END
        $fn$;
        REVOKE ALL ON FUNCTION iot_ensure_sensores_partition(date) FROM PUBLIC;

        """,
    ),
    (3, "alerts: history, engine state, outbox; BRIN index on reading time", ALERTS_MIGRATION_SQL),
    (
        4,
        "readings from any producer: extra fields, topic ids, offset gaps, dead-letter replay",
        """
        -- Fields a reading carries beyond the four we know (newer firmware): kept, never dropped.
        -- Nullable without default: no table rewrite, and NULL for every reading without extras.
        ALTER TABLE sensores ADD COLUMN extras jsonb;
        COMMENT ON COLUMN sensores.extras IS 'Fields of the reading beyond sensor_id/timestamp/temperatura/umidade';

        -- The topic's id (Kafka >= 2.8) with each position: a topic deleted and created again
        -- under the same name gets a new id, so old offsets are never applied to a new log.
        ALTER TABLE consumer_positions ADD COLUMN topic_id uuid;

        CREATE TABLE offset_gaps (
            id               bigserial   PRIMARY KEY,
            consumer_group   text        NOT NULL,
            topic            text        NOT NULL,
            kafka_partition  integer     NOT NULL,
            kind             text        NOT NULL,
            stored_position  bigint,
            log_start        bigint      NOT NULL,
            log_end          bigint      NOT NULL,
            records_lost     bigint,
            action           text        NOT NULL,
            new_position     bigint      NOT NULL,
            records_skipped  bigint      NOT NULL,
            old_topic_id     uuid,
            topic_id         uuid,
            detected_at      timestamptz NOT NULL DEFAULT now(),
            actor            text        NOT NULL DEFAULT current_user
        );
        COMMENT ON TABLE offset_gaps IS
            'Every stored position moved past a gap in the Kafka log (policy or manual reset), with the numbers';

        CREATE TABLE dead_letter_replays (
            id               bigserial   PRIMARY KEY,
            consumer_group   text        NOT NULL,
            filter           jsonb       NOT NULL,
            examined         integer     NOT NULL,
            replayed         integer     NOT NULL,
            still_invalid    integer     NOT NULL,
            skipped          integer     NOT NULL,
            started_at       timestamptz NOT NULL DEFAULT now(),
            actor            text        NOT NULL DEFAULT current_user
        );
        COMMENT ON TABLE dead_letter_replays IS 'Audit trail of `iot-consumer dead-letters replay` runs';
        ALTER TABLE dead_letters
            ADD COLUMN replay_id bigint REFERENCES dead_letter_replays (id),
            ADD COLUMN replayed_at timestamptz;
        CREATE INDEX dead_letters_reason_idx ON dead_letters (reason, dead_lettered_at) WHERE replayed_at IS NULL;
        """,
    ),
    (
        5,
        "rollups by minute and hour; retention by dropping expired partitions",
        """
        -- Per sensor and bucket: count, sum, min, max (mean = sum / count, generated). Updated in
        -- the consumer's batch transaction (iot_consumer.rollups), so they never drift from sensores.
        CREATE TABLE sensores_minuto (
            sensor_id          uuid             NOT NULL,
            bucket             timestamptz      NOT NULL,
            leituras           integer          NOT NULL,
            temperatura_soma   double precision NOT NULL,
            temperatura_min    double precision NOT NULL,
            temperatura_max    double precision NOT NULL,
            umidade_soma       double precision NOT NULL,
            umidade_min        double precision NOT NULL,
            umidade_max        double precision NOT NULL,
            temperatura_media  double precision GENERATED ALWAYS AS (temperatura_soma / leituras) STORED,
            umidade_media      double precision GENERATED ALWAYS AS (umidade_soma / leituras) STORED,
            PRIMARY KEY (sensor_id, bucket)
        ) PARTITION BY RANGE (bucket);
        COMMENT ON TABLE sensores_minuto IS 'Readings per sensor and UTC minute (count, sum, min, max, mean); daily partitions';
        CREATE TABLE sensores_hora (LIKE sensores_minuto INCLUDING GENERATED INCLUDING DEFAULTS,
                                    PRIMARY KEY (sensor_id, bucket)) PARTITION BY RANGE (bucket);
        COMMENT ON TABLE sensores_hora IS 'Readings per sensor and UTC hour (count, sum, min, max, mean); monthly partitions';
        CREATE INDEX sensores_minuto_bucket_idx ON sensores_minuto (bucket);
        CREATE INDEX sensores_hora_bucket_idx ON sensores_hora (bucket);

        -- One function creates a day's partition of sensores and of both rollups (the hour rollup
        -- has monthly partitions), so rows and their rollups can always be written together.
        -- Rollup rows are updated in place many times (every batch adds to the current minute and
        -- hour): room left on each page lets PostgreSQL do that without touching the indexes (HOT).
        CREATE OR REPLACE FUNCTION iot_ensure_sensores_partition(day date) RETURNS void
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
        DECLARE
            month date := date_trunc('month', day)::date;
        BEGIN
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I PARTITION OF sensores FOR VALUES FROM (%L) TO (%L)',
                'sensores_' || to_char(day, 'YYYYMMDD'),
                (day::timestamp AT TIME ZONE 'UTC'), ((day + 1)::timestamp AT TIME ZONE 'UTC'));
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I PARTITION OF sensores_minuto FOR VALUES FROM (%L) TO (%L) '
                'WITH (fillfactor = 70)',
                'sensores_minuto_' || to_char(day, 'YYYYMMDD'),
                (day::timestamp AT TIME ZONE 'UTC'), ((day + 1)::timestamp AT TIME ZONE 'UTC'));
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I PARTITION OF sensores_hora FOR VALUES FROM (%L) TO (%L) '
                'WITH (fillfactor = 70)',
                'sensores_hora_' || to_char(month, 'YYYYMM'),
                (month::timestamp AT TIME ZONE 'UTC'), ((month + interval '1 month')::timestamp AT TIME ZONE 'UTC'));
        END
        $fn$;
        REVOKE ALL ON FUNCTION iot_ensure_sensores_partition(date) FROM PUBLIC;

        -- Rollups of the readings already stored (one pass; the consumer keeps them from now on).
        DO $backfill$
        DECLARE
            day date;
        BEGIN
            FOR day IN
                SELECT to_date(right(c.relname, 8), 'YYYYMMDD')
                FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'sensores'::regclass AND c.relname ~ '^sensores_[0-9]{8}$'
            LOOP
                PERFORM iot_ensure_sensores_partition(day);
            END LOOP;
        END
        $backfill$;
        """
        + REBUILD_SQL
        + """

        -- Retention: detach and drop every partition of one of the three tables that ends at or
        -- before keep_from (never row-by-row deletes). SECURITY DEFINER: the consumer's role has no
        -- DDL rights. Gives up after lock_timeout rather than stall the writers behind it.
        CREATE FUNCTION iot_drop_expired_partitions(parent regclass, keep_from timestamptz)
        RETURNS TABLE (partition_name text, upper_bound timestamptz, bytes bigint)
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
        DECLARE
            part record;
        BEGIN
            IF parent NOT IN ('sensores'::regclass, 'sensores_minuto'::regclass, 'sensores_hora'::regclass) THEN
                RAISE EXCEPTION 'retention only drops partitions of sensores, sensores_minuto, sensores_hora, not %', parent;
            END IF;
"""
        + _DROP_EXPIRED_LOOP
        + """        END
        $fn$;
        REVOKE ALL ON FUNCTION iot_drop_expired_partitions(regclass, timestamptz) FROM PUBLIC;
        """,
    ),
    (
        6,
        "bounded dead letters: key size and truncation, expiry through a function",
        """
        -- Keys are stored truncated like payloads (a device can send 1 MiB keys).
        ALTER TABLE dead_letters ADD COLUMN key_size integer, ADD COLUMN key_truncated boolean NOT NULL DEFAULT false;
        -- Dead letters expire after DEAD_LETTER_RETENTION_DAYS, deleted in bounded chunks. SECURITY
        -- DEFINER: the consumer's role has no DELETE on the table, and this keeps the last day whatever
        -- it is asked.
        CREATE FUNCTION iot_expire_dead_letters(older_than timestamptz, max_rows integer) RETURNS integer
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
        DECLARE
            deleted integer;
        BEGIN
            IF older_than > now() - interval '1 day' THEN
                RAISE EXCEPTION 'dead letters of the last day are kept (asked to expire those before %)', older_than;
            END IF;
            DELETE FROM dead_letters WHERE id IN (
                SELECT id FROM dead_letters WHERE dead_lettered_at < older_than
                ORDER BY dead_lettered_at LIMIT greatest(max_rows, 0));
            GET DIAGNOSTICS deleted = ROW_COUNT;
            RETURN deleted;
        END
        $fn$;
        REVOKE ALL ON FUNCTION iot_expire_dead_letters(timestamptz, integer) FROM PUBLIC;
        """,
    ),
    (
        7,
        "retention configured in the database: partitions inside it cannot be dropped",
        """
        -- Written by the owner only (the consumer running as the owner records its RETENTION_DAYS;
        -- `iot-consumer retention` run as the owner does too). The service roles may read it.
        CREATE TABLE retention_policy (
            relation    regclass     PRIMARY KEY,
            keep_days   integer      NOT NULL CHECK (keep_days >= 1),
            updated_at  timestamptz  NOT NULL DEFAULT now()
        );
        COMMENT ON TABLE retention_policy IS 'Days each table keeps: iot_drop_expired_partitions refuses anything newer';
        -- The drop function trusts no argument: without a configured retention it drops nothing, and it
        -- never drops a partition that ends inside the configured days, whatever keep_from it is given.
        CREATE OR REPLACE FUNCTION iot_drop_expired_partitions(parent regclass, keep_from timestamptz)
        RETURNS TABLE (partition_name text, upper_bound timestamptz, bytes bigint)
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
        DECLARE
            part record;
            allowed integer;
        BEGIN
            IF parent NOT IN ('sensores'::regclass, 'sensores_minuto'::regclass, 'sensores_hora'::regclass) THEN
                RAISE EXCEPTION 'retention only drops partitions of sensores, sensores_minuto, sensores_hora, not %', parent;
            END IF;
            SELECT keep_days INTO allowed FROM retention_policy WHERE relation = parent;
            IF allowed IS NULL THEN
                RAISE EXCEPTION 'no retention is configured for % in the database: nothing is dropped', parent
                    USING HINT = 'the schema owner sets it (iot-consumer retention --retention-days N, run as the owner)';
            END IF;
            IF keep_from IS NULL OR keep_from > now() - make_interval(days => allowed) + interval '1 hour' THEN
                RAISE EXCEPTION 'refused: % keeps % days, so nothing after % may be dropped (asked: before %)',
                    parent, allowed, now() - make_interval(days => allowed), keep_from;
            END IF;
"""
        + _DROP_EXPIRED_LOOP
        + """        END
        $fn$;
        REVOKE ALL ON FUNCTION iot_drop_expired_partitions(regclass, timestamptz) FROM PUBLIC;
        """,
    ),
    (
        8,
        "fleet rollups: the whole fleet per minute and hour, with a sketch of the sensors heard",
        """
        -- One row per bucket and slot (the writing batch's lowest partition: replicas never wait on
        -- each other's rows); a reader adds the slots up. registros: HyperLogLog registers (rollups.py).
        CREATE TABLE sensores_frota_minuto (
            bucket            timestamptz      NOT NULL,
            slot              smallint         NOT NULL,
            leituras          bigint           NOT NULL,
            temperatura_soma  double precision NOT NULL,
            temperatura_min   double precision NOT NULL,
            temperatura_max   double precision NOT NULL,
            umidade_soma      double precision NOT NULL,
            umidade_min       double precision NOT NULL,
            umidade_max       double precision NOT NULL,
            registros         smallint[]       NOT NULL,
            PRIMARY KEY (bucket, slot)
        );
        COMMENT ON TABLE sensores_frota_minuto IS 'The whole fleet per UTC minute and slot: count, sum, min, max, sketch of the sensors heard';
        CREATE TABLE sensores_frota_hora (LIKE sensores_frota_minuto INCLUDING ALL);
        ALTER TABLE sensores_frota_hora DROP COLUMN registros;  -- long windows need the band only
        COMMENT ON TABLE sensores_frota_hora IS 'The whole fleet per UTC hour and slot: count, sum, min, max';

        -- Two sketches' union: each register's highest rank.
        CREATE FUNCTION iot_sketch_union(a smallint[], b smallint[]) RETURNS smallint[]
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
            SELECT array_agg(greatest(x, y) ORDER BY i) FROM unnest(a, b) WITH ORDINALITY AS u(x, y, i)
        $fn$;

        -- Retention of the fleet rollups follows the per-sensor ones: rows before the oldest bucket
        -- still kept there go. No argument to trust; SECURITY DEFINER: the consumer cannot DELETE.
        CREATE FUNCTION iot_expire_fleet_rollups() RETURNS bigint
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
        DECLARE
            minute_rows bigint;
            hour_rows bigint;
        BEGIN
            DELETE FROM sensores_frota_minuto WHERE bucket < (SELECT min(bucket) FROM sensores_minuto);
            GET DIAGNOSTICS minute_rows = ROW_COUNT;
            DELETE FROM sensores_frota_hora WHERE bucket < (SELECT min(bucket) FROM sensores_hora);
            GET DIAGNOSTICS hour_rows = ROW_COUNT;
            RETURN minute_rows + hour_rows;
        END
        $fn$;
        REVOKE ALL ON FUNCTION iot_expire_fleet_rollups() FROM PUBLIC;

        -- The fleet rows of what is stored already (one pass; the consumer keeps them from now on).
        """
        + FLEET_REBUILD_SQL
        + ";",
    ),
    (
        9,
        "dead letters that stand for a whole record batch: its last offset",
        """
        -- A compressed batch too large to decompress is dead-lettered as one row for all its
        -- offsets (kafka_offset .. kafka_last_offset); NULL: the row is one message.
        -- NOT VALID: the rows already there hold NULL, so checking them would only scan the table
        -- under this statement's exclusive lock; every row written from now on is checked.
        ALTER TABLE dead_letters ADD COLUMN kafka_last_offset bigint;
        ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_last_offset_check
            CHECK (kafka_last_offset IS NULL OR kafka_last_offset >= kafka_offset) NOT VALID;
        COMMENT ON COLUMN dead_letters.kafka_last_offset IS
            'Set when the row stands for a whole record batch (reason batch_too_large): its last offset';
        """,
    ),
]


@contextmanager
def transaction(conn: psycopg2.extensions.connection) -> Iterator[None]:
    """One explicit transaction on a connection that otherwise autocommits."""
    previous = conn.autocommit
    conn.autocommit = False
    try:
        yield
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.autocommit = previous


def migrate(conn: psycopg2.extensions.connection) -> int:
    """Apply pending migrations; return the schema version. Safe to run concurrently."""
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            row = cur.fetchone()
            if not (row and row[0]):  # only the owner creates it; other roles just read it
                cur.execute(
                    """CREATE TABLE schema_migrations (
                           version integer PRIMARY KEY,
                           description text NOT NULL,
                           applied_at timestamptz NOT NULL DEFAULT now())"""
                )
            cur.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
            row = cur.fetchone()
            current = int(row[0]) if row else 0
            for version, description, ddl in MIGRATIONS:
                if version <= current:
                    continue
                with transaction(conn):
                    cur.execute(ddl)
                    cur.execute(
                        "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                        (version, description),
                    )
                log.info("migration_applied", version=version, description=description)
                current = version
            ensure_service_roles(conn)
            _grant_service_roles(conn)
        finally:
            cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return current


# One privilege per grant group of GRANTS, newest first: when a role lacks any, GRANTS runs again.
REQUIRED_PRIVILEGES = (
    ("iot_consumer", "dead_letters.kafka_last_offset", "SELECT"),
    ("iot_consumer", "iot_expire_fleet_rollups()", "EXECUTE"),
    ("iot_consumer", "sensores_frota_hora", "UPDATE"),
    ("iot_dashboard", "sensores_frota_hora", "SELECT"),
    ("iot_consumer", "alert_outbox", "UPDATE"),
    ("iot_consumer", "dead_letters.kafka_offset", "SELECT"),
    ("iot_consumer", "retention_policy", "SELECT"),
    ("iot_consumer", "iot_expire_dead_letters(timestamptz, integer)", "EXECUTE"),
    ("iot_consumer", "sensores_hora", "UPDATE"),
    ("iot_exporter", "sensores_hora", "SELECT"),
    ("iot_dashboard", "sensores_hora", "SELECT"),
    ("iot_consumer", "offset_gaps", "INSERT"),
    ("iot_dashboard", "offset_gaps", "SELECT"),
    ("iot_consumer", "alert_outbox", "DELETE"),
    ("iot_dashboard", "alertas", "SELECT"),
    ("iot_consumer", "consumer_positions", "UPDATE"),
    ("iot_exporter", "sensores", "SELECT"),
)


def _has_privilege(role: str, thing: str, privilege: str) -> str:
    if privilege == "EXECUTE":
        return f"has_function_privilege('{role}', '{thing}', '{privilege}')"
    if "." in thing:  # a column
        table, column = thing.split(".")
        return f"has_column_privilege('{role}', '{table}', '{column}', '{privilege}')"
    return f"has_table_privilege('{role}', '{thing}', '{privilege}')"


_ANY_PRIVILEGE_MISSING = " OR ".join(
    f"(EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') AND NOT {_has_privilege(role, thing, privilege)})"
    for role, thing, privilege in REQUIRED_PRIVILEGES
)


def missing_service_roles(conn: psycopg2.extensions.connection) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(SERVICE_ROLES),))
        present = {str(row[0]) for row in cur.fetchall()}
    return [role for role in SERVICE_ROLES if role not in present]


def ensure_service_roles(conn: psycopg2.extensions.connection) -> list[str]:
    """Create the service roles that do not exist yet (LOGIN, no password until
    :func:`set_role_passwords` sets one; the read-only ones read-only by default), when the
    current role may create roles. Returns the roles still missing (nothing once done)."""
    missing = missing_service_roles(conn)
    if not missing:
        return []
    with conn.cursor() as cur:
        cur.execute("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")
        row = cur.fetchone()
        if not (row and row[0]):
            log.warning("service_roles_missing", roles=missing, detail="the owner may not create roles (CREATEROLE)")
            return missing
        for role in missing:
            with transaction(conn):
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK_KEY,))
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                if cur.fetchone() is None:  # another replica may have been first
                    cur.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
                    if role in READ_ONLY_ROLES:
                        cur.execute(
                            sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(sql.Identifier(role))
                        )
            log.info("service_role_created", role=role)
    return missing_service_roles(conn)


def scram_sha256_verifier(password: str, salt: bytes | None = None, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802 / 7677), computed
    here so the password itself never reaches the server (nor its statement log)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored_key).decode()}:{b64(server_key).decode()}"


def set_role_passwords(conn: psycopg2.extensions.connection, passwords: Mapping[str, str]) -> None:
    """Set the service roles' passwords (as SCRAM verifiers), each role only if given one."""
    unknown = sorted(set(passwords) - set(SERVICE_ROLES))
    if unknown:
        raise ValueError(f"not a service role: {', '.join(unknown)}")
    with transaction(conn), conn.cursor() as cur:
        for role, password in passwords.items():
            cur.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(scram_sha256_verifier(password))
                )
            )
    log.info("service_role_passwords_set", roles=sorted(passwords))


def _grant_service_roles(conn: psycopg2.extensions.connection) -> None:
    """As the owner, grant the service roles what they lack (nothing once done).

    GRANT rewrites the table's catalog row, as does creating a partition: two replicas doing
    both at once fail with "tuple concurrently updated". Hence: skip when nothing is missing,
    and hold the partition creators' lock meanwhile.
    """
    with conn.cursor() as cur:
        cur.execute(
            f"""SELECT pg_get_userbyid(c.relowner) = current_user, {_ANY_PRIVILEGE_MISSING}
               FROM pg_class c WHERE c.oid = 'sensores'::regclass"""
        )
        row = cur.fetchone()
        if not row or not row[0] or not row[1]:
            return
        with transaction(conn):
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK_KEY,))
            cur.execute(GRANTS)
        log.info("service_roles_granted")


# Each day's CREATE TABLE … PARTITION OF takes locks on three tables and their indexes.
DAYS_PER_TRANSACTION = 16


def partition_name(day: date) -> str:
    return f"sensores_{day:%Y%m%d}"


def create_day_partitions(cur: psycopg2.extensions.cursor, days: Iterable[date]) -> None:
    """Inside the caller's transaction: the partitions of sensores and its rollups for ``days``."""
    # Serialise creators across replicas: CREATE TABLE IF NOT EXISTS alone can race.
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK_KEY,))
    for day in sorted(days):
        cur.execute("SELECT iot_ensure_sensores_partition(%s)", (day,))


class DailyPartitions:
    """Creates ``sensores_YYYYMMDD`` partitions ahead of time and for late readings on demand."""

    def __init__(self, days_ahead: int = 2) -> None:
        self.days_ahead = days_ahead
        self._known: set[date] = set()

    def ensure(self, conn: psycopg2.extensions.connection, days: set[date]) -> None:
        """Make sure a partition exists for every day in ``days`` (UTC); at most
        :data:`DAYS_PER_TRANSACTION` days per transaction, so its locks stay bounded."""
        missing = sorted(days - self._known)
        for first in range(0, len(missing), DAYS_PER_TRANSACTION):
            chunk = missing[first : first + DAYS_PER_TRANSACTION]
            with transaction(conn), conn.cursor() as cur:
                create_day_partitions(cur, chunk)
            self._known.update(chunk)
            log.info("partitions_ensured", days=[d.isoformat() for d in chunk])

    def ensure_ahead(self, conn: psycopg2.extensions.connection, today: date | None = None) -> None:
        today = today or datetime.now(UTC).date()
        self.ensure(conn, {today + timedelta(days=i) for i in range(-1, self.days_ahead + 1)})

    def forget(self) -> None:
        """Drop the cache (after a reconnect the partitions may have been changed by others)."""
        self._known.clear()
