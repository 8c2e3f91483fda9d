"""iot_common: what every iot-monitor service shares (settings, logging, HTTP, schema)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("iot-common")  # written from the repository's VERSION (scripts/set-version.sh)
except PackageNotFoundError:  # run from a source tree without installing
    __version__ = "0+unknown"
