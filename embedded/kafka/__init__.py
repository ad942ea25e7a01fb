"""A small, durable Kafka-protocol broker for the embedded stack.

One process, one node, every partition led by it. It speaks the request and
response schemas of aiokafka (it decodes and encodes with aiokafka's own
protocol structs), keeps each partition as segment files of RecordBatch v2
bytes exactly as produced, and is durable across ``kill -9``: every batch is
written to its file before the produce is answered. See docs/embedded-kafka.md.

    python -m embedded.kafka --host 127.0.0.1 --port 9092 --data-dir var/kafka
"""

from embedded.kafka.config import BrokerConfig
from embedded.kafka.server import Broker

__all__ = ["Broker", "BrokerConfig"]
