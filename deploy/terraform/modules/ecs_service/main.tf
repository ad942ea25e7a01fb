# One Parley component on Fargate: its task definition (the one image, the
# command `python -m services.<name>`), service, log group, its own execution
# and task roles, service-discovery name, and autoscaling policies.

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  region     = data.aws_region.current.name
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  full_name  = "${var.name_prefix}-${var.name}"

  # The command: `python -m <module>`. A component whose pods need an id of
  # their own (the gateway: its Redis channel) takes the Fargate task id from
  # the task metadata endpoint first, then runs the same module in-process.
  command = var.unique_id_env == "" ? ["python", "-m", var.module] : [
    "python", "-c",
    "import json, os, runpy, urllib.request as u; t = json.load(u.urlopen(os.environ['ECS_CONTAINER_METADATA_URI_V4'] + '/task', timeout=5)); os.environ['${var.unique_id_env}'] = '${var.unique_id_prefix}' + t['TaskARN'].rsplit('/', 1)[1]; runpy.run_module('${var.module}', run_name='__main__', alter_sys=True)",
  ]

  health_url = "http://127.0.0.1:${var.port}/${var.name}/healthz"

  environment = [
    for k in sort(keys(var.environment)) : { name = k, value = var.environment[k] }
  ]
  secrets = [
    for k in sort(keys(var.secret_env_arns)) : { name = k, valueFrom = var.secret_env_arns[k] }
  ]

  ca_mount = var.ca_bundle == null ? [] : [
    { sourceVolume = "certs", containerPath = var.ca_bundle.directory, readOnly = true }
  ]
  ca_depends = var.ca_bundle == null ? [] : [
    { containerName = "certs", condition = "SUCCESS" }
  ]

  app_container = {
    name                   = var.name
    image                  = var.image
    essential              = true
    command                = local.command
    user                   = "10001:10001"
    readonlyRootFilesystem = true
    stopTimeout            = var.stop_timeout
    portMappings           = [{ containerPort = var.port, protocol = "tcp", name = var.name }]
    environment            = local.environment
    secrets                = local.secrets
    mountPoints            = local.ca_mount
    dependsOn              = local.ca_depends
    ulimits                = [{ name = "nofile", softLimit = 65536, hardLimit = 65536 }]
    linuxParameters = {
      initProcessEnabled = true
      capabilities       = { drop = ["ALL"] }
    }
    # Liveness: /<svc>/healthz (the ALB's target groups check /<svc>/startedz).
    healthCheck = {
      command     = ["CMD", "python", "-c", "import urllib.request; urllib.request.urlopen('${local.health_url}', timeout=2)"]
      interval    = 10
      timeout     = 5
      retries     = 3
      startPeriod = 30
    }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.app.name
        awslogs-region        = local.region
        awslogs-stream-prefix = var.name
      }
    }
  }

  # DocumentDB's CA bundle, fetched once per task into a volume the app mounts
  # read-only (the image has no RDS CA; docs/deployment.md). Runs as root only
  # to write the task-scoped volume; no capabilities, read-only root file system.
  certs_container = var.ca_bundle == null ? [] : [{
    name                   = "certs"
    image                  = var.image
    essential              = false
    user                   = "0:0"
    readonlyRootFilesystem = true
    command = [
      "python", "-c",
      "import urllib.request; urllib.request.urlretrieve('${var.ca_bundle.url}', '${var.ca_bundle.directory}/${var.ca_bundle.file}')",
    ]
    mountPoints = [{ sourceVolume = "certs", containerPath = var.ca_bundle.directory, readOnly = false }]
    linuxParameters = {
      capabilities = { drop = ["ALL"] }
    }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.app.name
        awslogs-region        = local.region
        awslogs-stream-prefix = "certs"
      }
    }
  }]

  # The CloudWatch agent scrapes the app's Prometheus endpoint on localhost and
  # writes the selected metrics in embedded metric format to a log group;
  # CloudWatch turns them into metrics (namespace var.metrics_namespace,
  # dimensions ClusterName and ServiceName). No code change in the app.
  publishes_metrics = length(var.published_metrics) > 0

  prometheus_config = {
    global = { scrape_interval = "15s", scrape_timeout = "5s" }
    scrape_configs = [{
      job_name     = var.name
      metrics_path = "/${var.name}/metrics"
      static_configs = [{
        targets = ["127.0.0.1:${var.port}"]
        labels  = { ClusterName = var.cluster_name, ServiceName = local.full_name }
      }]
    }]
  }

  agent_config = {
    agent = { region = local.region }
    logs = {
      force_flush_interval = 5
      metrics_collected = {
        prometheus = {
          log_group_name         = local.publishes_metrics ? aws_cloudwatch_log_group.metrics[0].name : ""
          prometheus_config_path = "env:PROMETHEUS_CONFIG_CONTENT"
          emf_processor = {
            metric_namespace = var.metrics_namespace
            metric_declaration = [{
              source_labels    = ["job"]
              label_matcher    = "^${var.name}$"
              dimensions       = [["ClusterName", "ServiceName"]]
              metric_selectors = [for m in var.published_metrics : "^${m}$"]
            }]
          }
        }
      }
    }
  }

  agent_container = local.publishes_metrics ? [{
    name      = "cloudwatch-agent"
    image     = var.cloudwatch_agent_image
    essential = false
    environment = [
      { name = "CW_CONFIG_CONTENT", value = jsonencode(local.agent_config) },
      { name = "PROMETHEUS_CONFIG_CONTENT", value = yamlencode(local.prometheus_config) },
    ]
    linuxParameters = {
      capabilities = { drop = ["ALL"] }
    }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.app.name
        awslogs-region        = local.region
        awslogs-stream-prefix = "cloudwatch-agent"
      }
    }
  }] : []
}

# --- logs -------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "app" {
  #checkov:skip=CKV_AWS_338:Application logs are operational data kept var.log_retention_days (30 by default) to bound cost; the audit trail lives in the database.
  name              = "/parley/${var.name_prefix}/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_cloudwatch_log_group" "metrics" {
  #checkov:skip=CKV_AWS_338:Embedded-metric-format records only feed CloudWatch metrics, which keep their own 15 months; a week of raw records is enough.
  count             = local.publishes_metrics ? 1 : 0
  name              = "/parley/${var.name_prefix}/${var.name}/metrics"
  retention_in_days = 7
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

# --- roles: the execution role starts the task, the task role is what the app may do -

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "execution" {
  name               = "${local.full_name}-execution"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # not restrictable to a resource
  }

  statement {
    sid = "PullTheImage"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = [var.ecr_repository_arn]
  }

  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.app.arn}:*"]
  }

  dynamic "statement" {
    for_each = length(var.secret_arns) > 0 ? [1] : []
    content {
      sid       = "ReadOwnSecrets"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = var.secret_arns
    }
  }

  dynamic "statement" {
    for_each = length(var.secret_arns) > 0 ? [1] : []
    content {
      sid       = "DecryptOwnSecrets"
      actions   = ["kms:Decrypt"]
      resources = [var.kms_key_arn]
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["secretsmanager.${local.region}.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "start-${var.name}"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

resource "aws_iam_role" "task" {
  name               = "${local.full_name}-task"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

# The app itself calls no AWS API; only the metrics sidecar writes its records.
data "aws_iam_policy_document" "task_metrics" {
  count = local.publishes_metrics ? 1 : 0

  statement {
    sid       = "WriteEmbeddedMetrics"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["${aws_cloudwatch_log_group.metrics[0].arn}:*"]
  }

  statement {
    sid       = "FindTheMetricsLogGroup"
    actions   = ["logs:CreateLogGroup", "logs:DescribeLogGroups"]
    resources = [aws_cloudwatch_log_group.metrics[0].arn, "${aws_cloudwatch_log_group.metrics[0].arn}:*"]
  }
}

resource "aws_iam_role_policy" "task_metrics" {
  count  = local.publishes_metrics ? 1 : 0
  name   = "publish-${var.name}-metrics"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task_metrics[0].json
}

# --- task definition and service ---------------------------------------------------

resource "aws_ecs_task_definition" "this" {
  family                   = local.full_name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  container_definitions    = jsonencode(concat(local.certs_container, [local.app_container], local.agent_container))
  tags                     = var.tags

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  dynamic "volume" {
    for_each = var.ca_bundle == null ? [] : [1]
    content {
      name = "certs"
    }
  }
}

resource "aws_service_discovery_service" "this" {
  name = var.name

  dns_config {
    namespace_id   = var.namespace_id
    routing_policy = "MULTIVALUE"
    dns_records {
      type = "A"
      ttl  = 10
    }
  }

  health_check_custom_config {
    failure_threshold = 1
  }
}

resource "aws_ecs_service" "this" {
  name                               = local.full_name
  cluster                            = var.cluster_arn
  task_definition                    = aws_ecs_task_definition.this.arn
  desired_count                      = var.min_count
  platform_version                   = "LATEST"
  propagate_tags                     = "SERVICE"
  enable_ecs_managed_tags            = true
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  health_check_grace_period_seconds  = var.target_group_arn == null ? null : 60
  wait_for_steady_state              = var.wait_for_steady_state
  tags                               = var.tags

  capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
    base              = 1
  }

  # A deployment whose tasks do not become healthy rolls back by itself.
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [var.security_group_id]
    assign_public_ip = false
  }

  dynamic "load_balancer" {
    for_each = var.target_group_arn == null ? [] : [var.target_group_arn]
    content {
      target_group_arn = load_balancer.value
      container_name   = var.name
      container_port   = var.port
    }
  }

  service_registries {
    registry_arn = aws_service_discovery_service.this.arn
  }

  # Autoscaling owns the task count after the first apply.
  lifecycle {
    ignore_changes = [desired_count]
  }
}

# --- autoscaling -----------------------------------------------------------------

resource "aws_appautoscaling_target" "this" {
  service_namespace  = "ecs"
  resource_id        = "service/${var.cluster_name}/${aws_ecs_service.this.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.min_count
  max_capacity       = var.max_count
}

# Every component: a CPU safety net.
resource "aws_appautoscaling_policy" "cpu" {
  name               = "${local.full_name}-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this.service_namespace
  resource_id        = aws_appautoscaling_target.this.resource_id
  scalable_dimension = aws_appautoscaling_target.this.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.scaling.cpu_target
    scale_in_cooldown  = var.scaling.scale_in_cooldown
    scale_out_cooldown = 60
    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

# HTTP components: requests per task through the ALB.
resource "aws_appautoscaling_policy" "requests" {
  count              = var.scaling.kind == "http" && var.target_group_arn != null ? 1 : 0
  name               = "${local.full_name}-requests"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this.service_namespace
  resource_id        = aws_appautoscaling_target.this.resource_id
  scalable_dimension = aws_appautoscaling_target.this.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.scaling.requests_per_target
    scale_in_cooldown  = var.scaling.scale_in_cooldown
    scale_out_cooldown = 60
    predefined_metric_specification {
      predefined_metric_type = "ALBRequestCountPerTarget"
      resource_label         = "${var.alb_arn_suffix}/${var.target_group_arn_suffix}"
    }
  }
}

# Gateways: open WebSockets per task, as the sidecar publishes them. The
# Average over every task's data points is the mean per task.
resource "aws_appautoscaling_policy" "connections" {
  count              = var.scaling.kind == "connections" ? 1 : 0
  name               = "${local.full_name}-connections"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this.service_namespace
  resource_id        = aws_appautoscaling_target.this.resource_id
  scalable_dimension = aws_appautoscaling_target.this.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.scaling.connections_per_task
    scale_in_cooldown  = var.scaling.scale_in_cooldown
    scale_out_cooldown = 60

    customized_metric_specification {
      metric_name = var.scaling.connections_metric
      namespace   = var.metrics_namespace
      statistic   = "Average"

      dimensions {
        name  = "ClusterName"
        value = var.cluster_name
      }
      dimensions {
        name  = "ServiceName"
        value = local.full_name
      }
    }
  }
}

# Kafka consumers: consumer-group lag (MSK's SumOffsetLag) divided by the
# running tasks, kept at a target per task. No more tasks than partitions help.
resource "aws_appautoscaling_policy" "kafka_lag" {
  count              = var.scaling.kind == "kafka_lag" ? 1 : 0
  name               = "${local.full_name}-kafka-lag"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this.service_namespace
  resource_id        = aws_appautoscaling_target.this.resource_id
  scalable_dimension = aws_appautoscaling_target.this.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.scaling.lag_per_task
    scale_in_cooldown  = var.scaling.scale_in_cooldown
    scale_out_cooldown = 60

    customized_metric_specification {
      metrics {
        id          = "lag"
        label       = "Records the consumer group has not yet processed"
        return_data = false
        metric_stat {
          stat = "Maximum"
          metric {
            namespace   = "AWS/Kafka"
            metric_name = "SumOffsetLag"
            dimensions {
              name  = "Cluster Name"
              value = var.kafka_cluster_name
            }
            dimensions {
              name  = "Consumer Group"
              value = var.scaling.consumer_group
            }
            dimensions {
              name  = "Topic"
              value = var.scaling.topic
            }
          }
        }
      }

      metrics {
        id          = "tasks"
        label       = "Running tasks of the service"
        return_data = false
        metric_stat {
          stat = "Average"
          metric {
            namespace   = "ECS/ContainerInsights"
            metric_name = "RunningTaskCount"
            dimensions {
              name  = "ClusterName"
              value = var.cluster_name
            }
            dimensions {
              name  = "ServiceName"
              value = local.full_name
            }
          }
        }
      }

      metrics {
        id          = "lag_per_task"
        label       = "Lag per running task"
        expression  = "lag / IF(tasks > 0, tasks, 1)"
        return_data = true
      }
    }
  }
}
