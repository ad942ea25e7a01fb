# Prometheus on AWS: an Amazon Managed Prometheus workspace that evaluates
# deploy/prometheus/alerts.yml, and one AWS Distro for OpenTelemetry collector
# task that finds the components' tasks with the ECS API (ecs_observer) and
# scrapes each on /<component>/metrics, one job per component as in
# deploy/prometheus/prometheus.yml, then writes to the workspace (SigV4).
# Alert routing (an alert manager definition) and Grafana are the operator's:
# docs/operations.md.

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  region     = data.aws_region.current.name
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  full_name  = "${var.name}-metrics-collector"

  # ecs_observer writes the discovered targets here (a task volume: the root
  # file system is read-only); the prometheus receiver reads them.
  targets_dir  = "/targets"
  targets_file = "${local.targets_dir}/ecs_sd_targets.yaml"

  collector_config = {
    extensions = {
      health_check = {}
      sigv4auth    = { region = local.region, service = "aps" }
      ecs_observer = {
        cluster_name     = var.cluster_name
        cluster_region   = local.region
        result_file      = local.targets_file
        refresh_interval = "30s"
        job_label_name   = "prometheus_job"
        services = [
          for name, t in var.targets : {
            name_pattern  = "^${t.service_name}$"
            metrics_ports = [t.port]
            metrics_path  = "/${name}/metrics"
            job_name      = name
          }
        ]
      }
    }
    receivers = {
      prometheus = {
        config = {
          global = { scrape_interval = var.scrape_interval, scrape_timeout = "10s" }
          # One job per component, named as under compose (alerts.yml matches
          # on job), each keeping its own targets of the discovered ones.
          scrape_configs = [
            for name, t in var.targets : {
              job_name        = name
              metrics_path    = "/${name}/metrics"
              file_sd_configs = [{ files = [local.targets_file] }]
              relabel_configs = [
                { source_labels = ["prometheus_job"], regex = name, action = "keep" },
                { regex = "prometheus_job", action = "labeldrop" },
              ]
            }
          ]
        }
      }
    }
    processors = { batch = {} }
    exporters = {
      prometheusremotewrite = {
        endpoint = "${aws_prometheus_workspace.this.prometheus_endpoint}api/v1/remote_write"
        auth     = { authenticator = "sigv4auth" }
      }
    }
    service = {
      extensions = ["health_check", "sigv4auth", "ecs_observer"]
      pipelines = {
        metrics = {
          receivers  = ["prometheus"]
          processors = ["batch"]
          exporters  = ["prometheusremotewrite"]
        }
      }
    }
  }
}

# --- the workspace and its rules --------------------------------------------------

resource "aws_prometheus_workspace" "this" {
  alias       = var.name
  kms_key_arn = var.kms_key_arn
  tags        = var.tags
}

# The same alert rules as under compose and the embedded stack. The ones on
# HAProxy's and the exporters' metrics stay quiet here (no HAProxy on AWS: the
# ALB has its own CloudWatch metrics).
resource "aws_prometheus_rule_group_namespace" "alerts" {
  name         = "parley"
  workspace_id = aws_prometheus_workspace.this.id
  data         = var.rules
}

# --- the collector ------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "collector" {
  #checkov:skip=CKV_AWS_338:The collector's own log is operational data kept var.log_retention_days like the services' logs.
  name              = "/parley/${var.name}/metrics-collector"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_security_group" "collector" {
  #checkov:skip=CKV2_AWS_5:Attached to the collector's ECS service below (network_configuration), which the graph check does not follow.
  name        = local.full_name
  description = "Parley metrics collector: scrapes the tasks, writes to Amazon Managed Prometheus"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

# The ECS API and the workspace's remote-write endpoint, through the NAT or
# endpoints. (The scrapes' egress, one rule per component, is in the stack.)
resource "aws_vpc_security_group_egress_rule" "https" {
  security_group_id = aws_security_group.collector.id
  description       = "Metrics collector: HTTPS to AWS APIs and the image registry"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

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

# The image is public (public.ecr.aws): no registry permission, only its logs.
data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.collector.arn}:*"]
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "start-metrics-collector"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

resource "aws_iam_role" "task" {
  name               = "${local.full_name}-task"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

# What ecs_observer reads (Fargate only: no EC2 or container-instance calls)
# and the one workspace it writes to.
data "aws_iam_policy_document" "task" {
  statement {
    sid       = "ListTheClustersTasksAndServices"
    actions   = ["ecs:ListTasks", "ecs:ListServices"]
    resources = ["*"] # scoped by the condition: these take no resource ARN
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [var.cluster_arn]
    }
  }

  statement {
    sid     = "DescribeTheClustersTasksAndServices"
    actions = ["ecs:DescribeTasks", "ecs:DescribeServices"]
    resources = [
      "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task/${var.cluster_name}/*",
      "arn:${local.partition}:ecs:${local.region}:${local.account_id}:service/${var.cluster_name}/*",
    ]
  }

  statement {
    sid       = "ReadTaskDefinitions"
    actions   = ["ecs:DescribeTaskDefinition"]
    resources = ["*"] # not restrictable to a resource
  }

  statement {
    sid       = "WriteTheWorkspace"
    actions   = ["aps:RemoteWrite"]
    resources = [aws_prometheus_workspace.this.arn]
  }
}

resource "aws_iam_role_policy" "task" {
  name   = "scrape-and-write-metrics"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}

resource "aws_ecs_task_definition" "collector" {
  family                   = local.full_name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 256
  memory                   = 512
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  tags                     = var.tags

  container_definitions = jsonencode([{
    name                   = "metrics-collector"
    image                  = var.collector_image
    essential              = true
    command                = ["--config=env:AOT_CONFIG_CONTENT"]
    environment            = [{ name = "AOT_CONFIG_CONTENT", value = yamlencode(local.collector_config) }]
    readonlyRootFilesystem = true
    mountPoints            = [{ sourceVolume = "targets", containerPath = local.targets_dir, readOnly = false }]
    linuxParameters        = { capabilities = { drop = ["ALL"] } }
    healthCheck = {
      command     = ["/healthcheck"]
      interval    = 30
      timeout     = 5
      retries     = 3
      startPeriod = 30
    }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.collector.name
        awslogs-region        = local.region
        awslogs-stream-prefix = "metrics-collector"
      }
    }
  }])

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  volume {
    name = "targets"
  }
}

# One task: ecs_observer lists every task of the cluster on each refresh, and
# several collectors would write every sample twice.
resource "aws_ecs_service" "collector" {
  name                               = local.full_name
  cluster                            = var.cluster_arn
  task_definition                    = aws_ecs_task_definition.collector.arn
  desired_count                      = 1
  launch_type                        = "FARGATE"
  platform_version                   = "LATEST"
  propagate_tags                     = "SERVICE"
  deployment_minimum_healthy_percent = 0
  deployment_maximum_percent         = 100
  tags                               = var.tags

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.collector.id]
    assign_public_ip = false
  }
}
