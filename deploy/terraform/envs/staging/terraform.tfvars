# Staging sizes: one task of each component (two gateways, to exercise
# routing between pods), small tasks.
sizes = {
  auth     = { cpu = 256, memory = 512, min = 1, max = 2 }
  keys     = { cpu = 256, memory = 512, min = 1, max = 2 }
  rooms    = { cpu = 256, memory = 512, min = 1, max = 2 }
  gateway  = { cpu = 512, memory = 1024, min = 2, max = 4 }
  delivery = { cpu = 512, memory = 1024, min = 1, max = 4 }
  notifier = { cpu = 256, memory = 512, min = 1, max = 2 }
}
