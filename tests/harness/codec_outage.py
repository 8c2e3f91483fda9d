"""Run ``iot-consumer`` as if a codec library were not installed, until a file appears.

Usage: ``python -m tests.harness.codec_outage CODEC RESTORE_FILE iot-consumer-args...``

kafka-python looks its codec modules up at call time (``kafka.codec.snappy`` etc.), so
setting one to None reproduces exactly what an image without that library does: every
batch compressed with it fails to decode. Once RESTORE_FILE exists the module comes back,
as if the library had been installed - the consumer must then recover by itself.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import kafka.codec

from iot_consumer.cli import main

MODULE_ATTRIBUTE = {"snappy": "snappy", "zstd": "zstd", "lz4": "lz4"}


def _restore_when(path: Path, attribute: str, module: object) -> None:
    while not path.exists():
        time.sleep(0.2)
    setattr(kafka.codec, attribute, module)


if __name__ == "__main__":
    codec, restore_file, *args = sys.argv[1:]
    attribute = MODULE_ATTRIBUTE[codec]
    original = getattr(kafka.codec, attribute)
    setattr(kafka.codec, attribute, None)
    # Stop signals go to the consumer's own signal thread (iot_common.lifecycle): a thread started
    # before it must not take them (the default action would end the process with no clean stop).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    threading.Thread(target=_restore_when, args=(Path(restore_file), attribute, original), daemon=True).start()
    sys.argv = ["iot-consumer", *args]
    main()
