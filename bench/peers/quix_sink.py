"""Quix Streams PostgreSQLSink as a benchmark peer (runs in its own venv: .bench/venv-quix).

Configured for throughput per Quix's docs: the sink writes one batch per checkpoint, so the
checkpoint interval (commit_interval) is the batch size control; include_metadata=False
keeps the payload's own timestamp (with the default, the sink overwrites a "timestamp"
column with Kafka's record time); schema_auto_update=False writes into our prepared table.

usage: python quix_sink.py TOPIC GROUP DATABASE PORT USER PASSWORD COUNT IDLE_SECONDS
"""

import sys

from quixstreams import Application
from quixstreams.sinks.community.postgresql import PostgreSQLSink


def main() -> None:
    topic, group, database, port, user, password, count, idle = sys.argv[1:9]
    app = Application(
        broker_address="localhost:9092",
        consumer_group=group,
        auto_offset_reset="earliest",
        commit_interval=1.0,
        commit_every=0,
        use_changelog_topics=False,
        auto_create_topics=False,
        loglevel="WARNING",
        consumer_extra_config={"fetch.min.bytes": 65536, "fetch.wait.max.ms": 100},
    )
    source = app.topic(topic, value_deserializer="json", key_deserializer="str")
    sink = PostgreSQLSink(
        host="localhost",
        port=int(port),
        dbname=database,
        user=user,
        password=password,
        table_name="sensores",
        schema_auto_update=False,
        include_metadata=False,
    )
    app.dataframe(source).sink(sink)
    app.run(count=int(count), timeout=float(idle), collect=False)


if __name__ == "__main__":
    main()
