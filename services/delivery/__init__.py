"""The delivery service: Kafka consumers that store and route envelopes."""
