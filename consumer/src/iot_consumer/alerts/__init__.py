"""Threshold and silence alerts, evaluated on the consumer's batches in the same transaction."""
