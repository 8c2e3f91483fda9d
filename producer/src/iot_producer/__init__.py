"""iot-producer: simulated sensors → Kafka topic ``iot_sensores``."""
