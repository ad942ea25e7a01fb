# Parley's components. Adding one is one entry here: every entry gets a task
# definition (the one image, `python -m <module>`), an ECS service, a log
# group, its own roles and security group, a service-discovery name
# (<name>.<namespace>), an ALB route when it has paths, and autoscaling.
# An entry whose code has not landed yet stays `enabled = false`
# (tests/deploy/test_terraform_structure.py checks both ways).
#
#   paths    ALB path patterns, the same as deploy/haproxy/haproxy.cfg's ACLs
#            (`path /ws` -> "/ws", `path_beg /auth/` -> "/auth/*")
#   uses     what the component talks to; it opens exactly those ports
#   calls    components it calls over HTTP (JWKS, internal APIs)
#   scaling  http: CPU + ALB requests per task; connections: open WebSockets
#            per task; kafka_lag: consumer-group lag per task

locals {
  topic_prefix = "parley."

  # The gauge services/gateway/hub.py exports (and the sidecar publishes).
  gateway_connections_metric = "parley_gateway_connections"

  components = {
    auth = {
      enabled           = true
      module            = "services.auth"
      port              = 8101
      paths             = ["/auth/*", "/.well-known/*"]
      priority          = 20
      uses              = ["mongo", "redis", "smtp", "key_encryption_secret"]
      calls             = []
      scaling           = "http"
      cpu               = 512
      memory            = 1024
      min               = 2
      max               = 10
      stop_timeout      = 20
      unique_id_env     = ""
      unique_id_prefix  = ""
      published_metrics = []
      consumer_group    = ""
      topic             = ""
    }

    keys = {
      enabled           = true
      module            = "services.keys"
      port              = 8102
      paths             = ["/keys/*"]
      priority          = 30
      uses              = ["mongo", "redis", "kafka"]
      calls             = ["auth"]
      scaling           = "http"
      cpu               = 512
      memory            = 1024
      min               = 2
      max               = 10
      stop_timeout      = 20
      unique_id_env     = ""
      unique_id_prefix  = ""
      published_metrics = []
      consumer_group    = ""
      topic             = ""
    }

    rooms = {
      enabled           = true
      module            = "services.rooms"
      port              = 8107
      paths             = ["/rooms/*"]
      priority          = 40
      uses              = ["mongo", "redis", "kafka"]
      calls             = ["auth"]
      scaling           = "http"
      cpu               = 512
      memory            = 1024
      min               = 2
      max               = 10
      stop_timeout      = 20
      unique_id_env     = ""
      unique_id_prefix  = ""
      published_metrics = []
      consumer_group    = ""
      topic             = ""
    }

    gateway = {
      enabled  = true
      module   = "services.gateway"
      port     = 8103
      paths    = ["/ws", "/gateway/*"]
      priority = 10
      uses     = ["redis", "kafka"]
      calls    = ["auth", "keys", "delivery", "rooms"]
      scaling  = "connections"
      cpu      = 1024
      memory   = 2048
      min      = 2
      max      = 40
      # Drain: `reconnect` to every socket, close, exit (aiohttp allows 10 s).
      stop_timeout      = 30
      unique_id_env     = "PARLEY_GATEWAY_ID"
      unique_id_prefix  = "gw-"
      published_metrics = [local.gateway_connections_metric]
      consumer_group    = ""
      topic             = ""
    }

    delivery = {
      enabled           = true
      module            = "services.delivery"
      port              = 8105
      paths             = ["/delivery/*"]
      priority          = 50
      uses              = ["mongo", "redis", "kafka", "franking_key"]
      calls             = ["auth", "keys", "rooms"] # tombstones: devices and members
      scaling           = "kafka_lag"
      cpu               = 1024
      memory            = 2048
      min               = 2
      max               = 12 # no more than the topic's partitions
      stop_timeout      = 20
      unique_id_env     = ""
      unique_id_prefix  = ""
      published_metrics = []
      consumer_group    = "${local.topic_prefix}delivery"
      topic             = "${local.topic_prefix}messages"
    }

    # Mention e-mail digests (docs/notifier.md). No ALB paths; it reads the auth
    # service's users (read only: its bounded context) and sends over SMTP.
    notifier = {
      enabled           = true
      module            = "services.notifier"
      port              = 8108
      paths             = []
      priority          = 0
      uses              = ["mongo", "redis", "kafka", "smtp"]
      calls             = []
      scaling           = "kafka_lag"
      cpu               = 512
      memory            = 1024
      min               = 1
      max               = 4
      stop_timeout      = 20
      unique_id_env     = ""
      unique_id_prefix  = ""
      published_metrics = []
      consumer_group    = "${local.topic_prefix}notifier"
      topic             = "${local.topic_prefix}notifications"
    }
  }

  # HAProxy's default_backend: paths no rule matches.
  default_component = "auth"

  # Enabled components, with the environment's size overrides.
  enabled = {
    for name, c in local.components : name => merge(c, try(var.sizes[name], {})) if c.enabled
  }
}
