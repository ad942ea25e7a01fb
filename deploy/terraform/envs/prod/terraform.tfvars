# Production sizes: at least two tasks of everything (one per zone at the
# least), room to grow. Delivery's max matches kafka_partitions (24).
sizes = {
  auth     = { cpu = 512, memory = 1024, min = 2, max = 12 }
  keys     = { cpu = 512, memory = 1024, min = 2, max = 12 }
  gateway  = { cpu = 1024, memory = 2048, min = 3, max = 60 }
  delivery = { cpu = 1024, memory = 2048, min = 3, max = 24 }
}
