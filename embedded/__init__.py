"""Embedded servers that Parley's own scripts start on loopback (``make run``, tests, CI).

Production never runs these: it uses managed services (MSK for Kafka), and
docker-compose runs the real images. See docs/embedded.md.
"""
