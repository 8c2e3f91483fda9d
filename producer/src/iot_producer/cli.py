"""``iot-producer``: simulate sensors and publish their readings to Kafka."""

from __future__ import annotations

import random
from dataclasses import asdict
from typing import Annotated

import typer

from iot_common.cli import fail, setup_service
from iot_common.http import start_observability_server
from iot_common.lifecycle import StopFlag
from iot_common.logging import get_logger
from iot_common.settings import ConfigError, KafkaSettings, load_settings
from iot_producer.publisher import (
    COMPRESSION_CHOICES,
    DEFAULT_MAX_IN_FLIGHT,
    Encoder,
    PublisherError,
    ReadingPublisher,
)
from iot_producer.runner import Pacing, run
from iot_producer.simulation import Anomaly, Ranges, ScriptedSpike, SensorFleet

app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=False)
log = get_logger("iot_producer")

EXIT_SEND_FAILED = 1


def _parse_anomalies(value: str) -> tuple[Anomaly, ...]:
    kinds = []
    for part in (p.strip() for p in value.split(",") if p.strip()):
        try:
            kinds.append(Anomaly(part))
        except ValueError:
            raise typer.BadParameter(f"{part!r} is not one of {', '.join(a.value for a in Anomaly)}") from None
    return tuple(kinds)


@app.command()
def produce(
    sensors: Annotated[
        int, typer.Option(min=1, max=1_000_000, envvar="PRODUCER_SENSORS", help="Number of simulated sensors.")
    ] = 5,
    interval: Annotated[
        float,
        typer.Option(
            min=0.001, envvar="PRODUCER_INTERVAL", help="Seconds between two readings of one sensor (real-time mode)."
        ),
    ] = 1.0,
    rate: Annotated[
        float | None,
        typer.Option(min=0.001, envvar="PRODUCER_RATE", help="Total readings per second; overrides --interval."),
    ] = None,
    max_rate: Annotated[
        bool,
        typer.Option(
            "--max-rate",
            envvar="PRODUCER_MAX_RATE",
            help="As fast as possible (load test); overrides --rate and --interval.",
        ),
    ] = False,
    count: Annotated[
        int | None,
        typer.Option(
            min=1, envvar="PRODUCER_COUNT", help="Stop after this many readings in total (round-robin over sensors)."
        ),
    ] = None,
    duration: Annotated[
        float | None, typer.Option(min=0.001, envvar="PRODUCER_DURATION", help="Stop after this many seconds.")
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(envvar="PRODUCER_SEED", help="Seed for sensor ids, metadata and values (reproducible runs)."),
    ] = None,
    anomaly_rate: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            envvar="PRODUCER_ANOMALY_RATE",
            help="Probability per reading that an anomaly episode starts.",
        ),
    ] = 0.0,
    anomalies: Annotated[
        str, typer.Option(envvar="PRODUCER_ANOMALIES", help="Anomaly kinds to draw from: spike,stuck,missing.")
    ] = "spike,stuck,missing",
    spike: Annotated[
        str | None,
        typer.Option(
            envvar="PRODUCER_SPIKE",
            metavar="START:READINGS[:PEAK]",
            help="Scripted anomaly: the first sensor reads PEAK °C (default: temperature max + 5) from its START-th reading for READINGS readings.",
        ),
    ] = None,
    temperature_min: Annotated[float, typer.Option(envvar="PRODUCER_TEMPERATURE_MIN")] = 20.0,
    temperature_max: Annotated[float, typer.Option(envvar="PRODUCER_TEMPERATURE_MAX")] = 30.0,
    humidity_min: Annotated[float, typer.Option(envvar="PRODUCER_HUMIDITY_MIN")] = 30.0,
    humidity_max: Annotated[float, typer.Option(envvar="PRODUCER_HUMIDITY_MAX")] = 80.0,
    compression: Annotated[
        str, typer.Option(envvar="PRODUCER_COMPRESSION", help=f"One of {', '.join(COMPRESSION_CHOICES)}.")
    ] = "none",
    linger_ms: Annotated[
        int,
        typer.Option(min=0, max=60_000, envvar="PRODUCER_LINGER_MS", help="How long the client waits to fill a batch."),
    ] = 5,
    batch_size: Annotated[
        int, typer.Option(min=1024, envvar="PRODUCER_BATCH_SIZE", help="Kafka batch size in bytes per partition.")
    ] = 65536,
    encoder: Annotated[
        Encoder,
        typer.Option(
            envvar="PRODUCER_ENCODER",
            case_sensitive=False,
            help="How readings become Kafka records: native = the C encoder, many readings per call "
            "(iot_producer_fastpath; fails at start if it is not installed), python = one "
            "KafkaProducer.send() per reading, auto = native when installed.",
        ),
    ] = Encoder.AUTO,
    max_in_flight: Annotated[
        int,
        typer.Option(
            min=1,
            envvar="PRODUCER_MAX_IN_FLIGHT",
            help="Readings sent but not yet acknowledged, at most; generation waits beyond that.",
        ),
    ] = DEFAULT_MAX_IN_FLIGHT,
    metrics_port: Annotated[
        int | None, typer.Option(min=-1, max=65535, help="Overrides METRICS_PORT (0 = any free port, -1 = off).")
    ] = None,
) -> None:
    """Simulate SENSORS sensors and publish one reading per sensor per INTERVAL seconds.

    Readings are keyed by sensor id (per-sensor order), sent with acks=all and idempotence.
    On SIGTERM/SIGINT generation stops, buffered readings are flushed, and the exit code is 1
    if any reading failed for good (0 otherwise).
    """
    obs = setup_service("iot-producer")
    try:
        kafka = load_settings(KafkaSettings)
        ranges = Ranges(temperature_min, temperature_max, humidity_min, humidity_max)
        scripted = ScriptedSpike.parse(spike, temperature_max + 5.0) if spike else None
    except (ConfigError, ValueError) as exc:
        fail(str(exc))
    if compression not in COMPRESSION_CHOICES:
        fail(f"--compression must be one of {', '.join(COMPRESSION_CHOICES)}, got {compression!r}")
    kinds = _parse_anomalies(anomalies)
    seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
    pacing = Pacing(rate=None if max_rate else (rate or sensors / interval), count=count, duration_s=duration)

    stop = StopFlag().install(force_exit_after=obs.shutdown_timeout_s)
    fleet = SensorFleet(
        sensors, seed=seed, ranges=ranges, anomaly_rate=anomaly_rate, anomaly_kinds=kinds, spike=scripted
    )
    try:
        publisher = ReadingPublisher(
            kafka,
            compression=compression,
            linger_ms=linger_ms,
            batch_size=batch_size,
            encoder=encoder,
            max_in_flight=max_in_flight,
        )
    except PublisherError as exc:
        fail(str(exc))
    server = start_observability_server(obs.metrics_host, obs.metrics_port if metrics_port is None else metrics_port)
    log.info(
        "producer_started",
        topic=kafka.topic,
        bootstrap_servers=kafka.bootstrap_servers,
        sensors=sensors,
        seed=seed,
        rate=pacing.rate,
        count=count,
        duration=duration,
        anomaly_rate=anomaly_rate,
        spike=None if scripted is None else {**asdict(scripted), "sensor_id": str(fleet.sensors[0].sensor_id)},
        encoder=publisher.encoder.value,
        metrics_port=server.port if server else None,
    )
    try:
        run(fleet, publisher, pacing, stop)
    finally:
        counts = publisher.close()
        log.info(
            "producer_stopped",
            produced=counts.produced,
            acknowledged=counts.acknowledged,
            failed=counts.failed,
            unconfirmed=counts.in_flight,
            waits_for_acknowledgements=publisher.room_waits,
            first_error=publisher.first_error,
        )
        if server:
            server.stop()
    if counts.failed or counts.in_flight:
        raise typer.Exit(EXIT_SEND_FAILED)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
