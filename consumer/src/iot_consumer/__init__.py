"""iot-consumer: Kafka topic ``iot_sensores`` → PostgreSQL table ``sensores``, exactly-once effect."""
