# One Fargate service per enabled component, all from the one image.

locals {
  namespace = module.cluster.namespace
  image     = "${var.ecr_repository_url}:${var.image_tag}"

  # Plain settings every component reads (docs/configuration.md). Nothing
  # secret here: secrets come from Secrets Manager below.
  common_environment = {
    PARLEY_HOST                    = "0.0.0.0"
    PARLEY_PUBLIC_URL              = module.alb.api_url
    PARLEY_WEB_URL                 = module.static_site.url
    PARLEY_CORS_ORIGINS            = module.static_site.url # the web apps (CloudFront) call the APIs (the ALB)
    PARLEY_KAFKA_BOOTSTRAP         = module.kafka.bootstrap_brokers
    PARLEY_KAFKA_SECURITY_PROTOCOL = module.kafka.security_protocol
    PARLEY_KAFKA_SASL_MECHANISM    = "SCRAM-SHA-512"
    PARLEY_KAFKA_PARTITIONS        = tostring(var.kafka_partitions)
    PARLEY_KAFKA_FETCH_MAX_WAIT_MS = "500"
    PARLEY_TOPIC_PREFIX            = local.topic_prefix
    PARLEY_AUTH_URL                = "http://auth.${local.namespace}:${local.components.auth.port}"
    PARLEY_KEYS_URL                = "http://keys.${local.namespace}:${local.components.keys.port}"
    PARLEY_DELIVERY_URL            = "http://delivery.${local.namespace}:${local.components.delivery.port}"
    PARLEY_ROOMS_URL               = "http://rooms.${local.namespace}:${local.components.rooms.port}"
    PARLEY_SMTP_HOST               = var.smtp_host
    PARLEY_SMTP_PORT               = tostring(var.smtp_port)
    PARLEY_SMTP_TLS                = "true"
    PARLEY_SMTP_FROM               = var.smtp_from
    PARLEY_LOG_LEVEL               = var.log_level
    PARLEY_LOG_FORMAT              = "json"
    # Hot inbox writes wait for a replica: a failover cannot promote one without them.
    PARLEY_REDIS_WAIT_REPLICAS = var.redis_node_count > 1 ? "1" : "0"
  }

  # Every secret a component may get, and what it must use to get it.
  secret_catalog = {
    PARLEY_MONGO_URL             = { needs = "mongo", value_from = local.mongo_secret, arn = local.mongo_secret }
    PARLEY_REDIS_URL             = { needs = "redis", value_from = module.redis.url_secret_arn, arn = module.redis.url_secret_arn }
    PARLEY_KAFKA_SASL_USERNAME   = { needs = "kafka", value_from = "${module.kafka.scram_secret_arn}:username::", arn = module.kafka.scram_secret_arn }
    PARLEY_KAFKA_SASL_PASSWORD   = { needs = "kafka", value_from = "${module.kafka.scram_secret_arn}:password::", arn = module.kafka.scram_secret_arn }
    PARLEY_KEY_ENCRYPTION_SECRET = { needs = "key_encryption_secret", value_from = aws_secretsmanager_secret.key_encryption.arn, arn = aws_secretsmanager_secret.key_encryption.arn }
    PARLEY_FRANKING_KEY          = { needs = "franking_key", value_from = "${aws_secretsmanager_secret.franking.arn}:key::", arn = aws_secretsmanager_secret.franking.arn }
    PARLEY_FRANKING_KEY_ID       = { needs = "franking_key", value_from = "${aws_secretsmanager_secret.franking.arn}:kid::", arn = aws_secretsmanager_secret.franking.arn }
    PARLEY_FRANKING_RETIRED_KEYS = { needs = "franking_key", value_from = "${aws_secretsmanager_secret.franking.arn}:retired::", arn = aws_secretsmanager_secret.franking.arn }
    PARLEY_SMTP_USERNAME         = { needs = "smtp_credentials", value_from = "${coalesce(var.smtp_credentials_secret_arn, "none")}:username::", arn = var.smtp_credentials_secret_arn }
    PARLEY_SMTP_PASSWORD         = { needs = "smtp_credentials", value_from = "${coalesce(var.smtp_credentials_secret_arn, "none")}:password::", arn = var.smtp_credentials_secret_arn }
  }

  # SMTP credentials go wherever SMTP is used, when a secret is given.
  needs = {
    for name, c in local.enabled : name => concat(
      c.uses,
      contains(c.uses, "smtp") && var.smtp_credentials_secret_arn != null ? ["smtp_credentials"] : [],
    )
  }
}

module "service" {
  source   = "../modules/ecs_service"
  for_each = local.enabled

  name_prefix        = local.name
  name               = each.key
  module             = each.value.module
  unique_id_env      = each.value.unique_id_env
  unique_id_prefix   = each.value.unique_id_prefix
  image              = local.image
  ecr_repository_arn = var.ecr_repository_arn
  port               = each.value.port
  cpu                = each.value.cpu
  memory             = each.value.memory
  min_count          = each.value.min
  max_count          = each.value.max
  stop_timeout       = each.value.stop_timeout

  environment = merge(
    local.common_environment,
    { PARLEY_PORT = tostring(each.value.port) },
    # The admin console's sign-in comes back to the web domain (auth's OIDC client).
    each.key == "auth" ? { PARLEY_ADMIN_CONSOLE_URL = "${trimsuffix(module.static_site.url, "/")}/admin/" } : {},
  )
  secret_env_arns = {
    for env, s in local.secret_catalog : env => s.value_from if contains(local.needs[each.key], s.needs)
  }
  secret_arns = distinct([
    for env, s in local.secret_catalog : s.arn if contains(local.needs[each.key], s.needs)
  ])
  ca_bundle = local.uses_documentdb && contains(each.value.uses, "mongo") ? local.ca_bundle : null

  cluster_arn             = module.cluster.arn
  cluster_name            = module.cluster.name
  namespace_id            = module.cluster.namespace_id
  subnet_ids              = module.network.private_subnet_ids
  security_group_id       = aws_security_group.component[each.key].id
  target_group_arn        = lookup(module.alb.target_group_arns, each.key, null)
  target_group_arn_suffix = lookup(module.alb.target_group_arn_suffixes, each.key, "")
  alb_arn_suffix          = module.alb.arn_suffix
  kafka_cluster_name      = module.kafka.cluster_name

  published_metrics = each.value.published_metrics
  metrics_namespace = var.metrics_namespace
  scaling = {
    kind                 = each.value.scaling
    cpu_target           = var.cpu_target_percent
    requests_per_target  = var.requests_per_target_per_minute
    connections_metric   = local.gateway_connections_metric
    connections_per_task = var.gateway_connections_per_task
    consumer_group       = each.value.consumer_group
    topic                = each.value.topic
    lag_per_task         = var.kafka_lag_per_task
    # Gateways scale in slowly: every removed pod sends its clients elsewhere.
    scale_in_cooldown = each.value.scaling == "connections" ? 600 : 300
  }

  log_retention_days = var.log_retention_days
  kms_key_arn        = module.kms.key_arn
  tags               = merge(local.tags, { Component = each.key })

  depends_on = [terraform_data.kafka_topics]
}

# --- kafka-init: the topics, with the cluster's replication, before any service -

resource "aws_cloudwatch_log_group" "kafka_init" {
  #checkov:skip=CKV_AWS_338:One-off task output; kept var.log_retention_days like the services' logs.
  name              = "/parley/${local.name}/kafka-init"
  retention_in_days = var.log_retention_days
  kms_key_id        = module.kms.key_arn
  tags              = local.tags
}

data "aws_iam_policy_document" "tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "kafka_init_execution" {
  name               = "${local.name}-kafka-init-execution"
  assume_role_policy = data.aws_iam_policy_document.tasks_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "kafka_init_execution" {
  statement {
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # not restrictable to a resource
  }
  statement {
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    resources = [var.ecr_repository_arn]
  }
  statement {
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.kafka_init.arn}:*"]
  }
  statement {
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [module.kafka.scram_secret_arn]
  }
  statement {
    actions   = ["kms:Decrypt"]
    resources = [module.kms.key_arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${local.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "kafka_init_execution" {
  name   = "start-kafka-init"
  role   = aws_iam_role.kafka_init_execution.id
  policy = data.aws_iam_policy_document.kafka_init_execution.json
}

resource "aws_iam_role" "kafka_init_task" {
  name               = "${local.name}-kafka-init-task"
  assume_role_policy = data.aws_iam_policy_document.tasks_assume.json
  tags               = local.tags
}

resource "aws_ecs_task_definition" "kafka_init" {
  family                   = "${local.name}-kafka-init"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 256
  memory                   = 512
  execution_role_arn       = aws_iam_role.kafka_init_execution.arn
  task_role_arn            = aws_iam_role.kafka_init_task.arn
  tags                     = local.tags

  container_definitions = jsonencode([{
    name                   = "kafka-init"
    image                  = local.image
    essential              = true
    command                = ["python", "-c", file("${path.module}/kafka_init.py")]
    user                   = "10001:10001"
    readonlyRootFilesystem = true
    linuxParameters        = { capabilities = { drop = ["ALL"] } }
    environment = [
      for k, v in {
        PARLEY_KAFKA_BOOTSTRAP         = module.kafka.bootstrap_brokers
        PARLEY_KAFKA_SECURITY_PROTOCOL = module.kafka.security_protocol
        PARLEY_KAFKA_SASL_MECHANISM    = "SCRAM-SHA-512"
        PARLEY_KAFKA_PARTITIONS        = tostring(var.kafka_partitions)
        PARLEY_TOPIC_PREFIX            = local.topic_prefix
        KAFKA_REPLICATION_FACTOR       = tostring(min(3, var.kafka_broker_count))
      } : { name = k, value = v }
    ]
    secrets = [
      { name = "PARLEY_KAFKA_SASL_USERNAME", valueFrom = "${module.kafka.scram_secret_arn}:username::" },
      { name = "PARLEY_KAFKA_SASL_PASSWORD", valueFrom = "${module.kafka.scram_secret_arn}:password::" },
    ]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.kafka_init.name
        awslogs-region        = local.region
        awslogs-stream-prefix = "kafka-init"
      }
    }
  }])

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }
}

# Runs kafka-init (AWS CLI where terraform runs) whenever the cluster, the
# partition count or the task changes; services wait for it.
resource "terraform_data" "kafka_topics" {
  count = var.run_kafka_init ? 1 : 0

  triggers_replace = [
    module.kafka.cluster_arn,
    var.kafka_partitions,
    aws_ecs_task_definition.kafka_init.arn,
  ]

  provisioner "local-exec" {
    command = join(" ", [
      "bash", "${path.module}/run_task.sh",
      module.cluster.name,
      aws_ecs_task_definition.kafka_init.arn,
      "kafka-init",
      join(",", module.network.private_subnet_ids),
      aws_security_group.kafka_init.id,
    ])
  }

  depends_on = [
    module.kafka,
    module.network,
    aws_vpc_security_group_egress_rule.kafka_init_kafka,
    aws_vpc_security_group_ingress_rule.kafka_from_init,
    aws_vpc_security_group_egress_rule.kafka_init_https,
    aws_iam_role_policy.kafka_init_execution,
  ]
}
