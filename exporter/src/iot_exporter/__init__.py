"""iot-exporter: PostgreSQL table ``sensores`` → CSV/XLSX files."""
