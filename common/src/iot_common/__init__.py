"""iot_common: what every iot-monitor service shares (settings, logging, HTTP, schema)."""

__version__ = "0.1.0"
