# Security groups: one per component, opened only for what components.tf says
# it needs — the ALB on its port (if routed), the metrics collector on it, the
# components that call it, the data stores it uses, HTTPS out (AWS APIs, the
# image registry) and SMTP out for those that send mail. Data stores accept
# only their users.

locals {
  datastores = {
    mongo = { security_group_id = local.uses_documentdb ? module.documentdb[0].security_group_id : null, port = 27017 }
    redis = { security_group_id = module.redis.security_group_id, port = module.redis.port }
    kafka = { security_group_id = module.kafka.security_group_id, port = module.kafka.client_port }
  }

  routed = { for name, c in local.enabled : name => c if length(c.paths) > 0 || name == local.default_component }

  calls = {
    for pair in flatten([
      for caller, c in local.enabled : [
        for callee in c.calls : { caller = caller, callee = callee } if contains(keys(local.enabled), callee)
      ]
    ]) : "${pair.caller}-to-${pair.callee}" => pair
  }

  # Managed stores are reached by security group; an external MongoDB (Atlas) by port.
  store_use = {
    for use in flatten([
      for name, c in local.enabled : [
        for store in ["mongo", "redis", "kafka"] : { component = name, store = store } if contains(c.uses, store)
      ]
    ]) : "${use.component}-to-${use.store}" => use
    if !(use.store == "mongo" && !local.uses_documentdb)
  }
  external_mongo_use = {
    for name, c in local.enabled : name => c if contains(c.uses, "mongo") && !local.uses_documentdb
  }
  smtp_use = { for name, c in local.enabled : name => c if contains(c.uses, "smtp") }

  # Components the metrics collector scrapes (monitoring.tf): all of them.
  scraped = var.managed_prometheus ? local.enabled : {}
}

resource "aws_security_group" "component" {
  #checkov:skip=CKV2_AWS_5:Attached to the component's ECS service in modules/ecs_service (var.security_group_id), which the graph check does not follow through a module.
  for_each    = local.enabled
  name        = "${local.name}-${each.key}"
  description = "Parley ${each.key} tasks"
  vpc_id      = module.network.vpc_id
  tags        = merge(local.tags, { Component = each.key })
}

# --- from the ALB ----------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "from_alb" {
  for_each                     = local.routed
  security_group_id            = aws_security_group.component[each.key].id
  description                  = "ALB to ${each.key}"
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = module.alb.security_group_id
}

resource "aws_vpc_security_group_egress_rule" "alb_to_component" {
  for_each                     = local.routed
  security_group_id            = module.alb.security_group_id
  description                  = "ALB to ${each.key}"
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = aws_security_group.component[each.key].id
}

# --- from the metrics collector ---------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "metrics" {
  for_each                     = local.scraped
  security_group_id            = aws_security_group.component[each.key].id
  description                  = "Metrics collector scrapes ${each.key}"
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = module.monitoring[0].security_group_id
}

resource "aws_vpc_security_group_egress_rule" "metrics" {
  for_each                     = local.scraped
  security_group_id            = module.monitoring[0].security_group_id
  description                  = "Metrics collector scrapes ${each.key}"
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = aws_security_group.component[each.key].id
}

# --- between components ----------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "call" {
  for_each                     = local.calls
  security_group_id            = aws_security_group.component[each.value.callee].id
  description                  = "${each.value.caller} calls ${each.value.callee}"
  ip_protocol                  = "tcp"
  from_port                    = local.enabled[each.value.callee].port
  to_port                      = local.enabled[each.value.callee].port
  referenced_security_group_id = aws_security_group.component[each.value.caller].id
}

resource "aws_vpc_security_group_egress_rule" "call" {
  for_each                     = local.calls
  security_group_id            = aws_security_group.component[each.value.caller].id
  description                  = "${each.value.caller} calls ${each.value.callee}"
  ip_protocol                  = "tcp"
  from_port                    = local.enabled[each.value.callee].port
  to_port                      = local.enabled[each.value.callee].port
  referenced_security_group_id = aws_security_group.component[each.value.callee].id
}

# --- to the data stores ----------------------------------------------------------

resource "aws_vpc_security_group_egress_rule" "store" {
  for_each                     = local.store_use
  security_group_id            = aws_security_group.component[each.value.component].id
  description                  = "${each.value.component} to ${each.value.store}"
  ip_protocol                  = "tcp"
  from_port                    = local.datastores[each.value.store].port
  to_port                      = local.datastores[each.value.store].port
  referenced_security_group_id = local.datastores[each.value.store].security_group_id
}

resource "aws_vpc_security_group_ingress_rule" "store" {
  for_each                     = local.store_use
  security_group_id            = local.datastores[each.value.store].security_group_id
  description                  = "${each.value.component} to ${each.value.store}"
  ip_protocol                  = "tcp"
  from_port                    = local.datastores[each.value.store].port
  to_port                      = local.datastores[each.value.store].port
  referenced_security_group_id = aws_security_group.component[each.value.component].id
}

resource "aws_vpc_security_group_egress_rule" "external_mongo" {
  for_each          = local.external_mongo_use
  security_group_id = aws_security_group.component[each.key].id
  description       = "${each.key} to the external MongoDB (Atlas)"
  ip_protocol       = "tcp"
  from_port         = 27017
  to_port           = 27017
  cidr_ipv4         = var.external_mongo_cidr
}

# --- out of the VPC ------------------------------------------------------------

# AWS APIs (Secrets Manager, ECR, CloudWatch) through endpoints or the NAT,
# image layers, and the RDS CA bundle.
resource "aws_vpc_security_group_egress_rule" "https" {
  for_each          = local.enabled
  security_group_id = aws_security_group.component[each.key].id
  description       = "${each.key}: HTTPS to AWS APIs and the image registry"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "smtp" {
  for_each          = local.smtp_use
  security_group_id = aws_security_group.component[each.key].id
  description       = "${each.key}: SMTP submission (SES)"
  ip_protocol       = "tcp"
  from_port         = var.smtp_port
  to_port           = var.smtp_port
  cidr_ipv4         = "0.0.0.0/0"
}

# The one-off kafka-init task: Kafka and HTTPS only.
resource "aws_security_group" "kafka_init" {
  #checkov:skip=CKV2_AWS_5:Attached at run time: run_task.sh starts the one-off kafka-init task with it.
  name        = "${local.name}-kafka-init"
  description = "Parley kafka-init one-off task"
  vpc_id      = module.network.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_egress_rule" "kafka_init_kafka" {
  security_group_id            = aws_security_group.kafka_init.id
  description                  = "kafka-init to kafka"
  ip_protocol                  = "tcp"
  from_port                    = module.kafka.client_port
  to_port                      = module.kafka.client_port
  referenced_security_group_id = module.kafka.security_group_id
}

resource "aws_vpc_security_group_ingress_rule" "kafka_from_init" {
  security_group_id            = module.kafka.security_group_id
  description                  = "kafka-init to kafka"
  ip_protocol                  = "tcp"
  from_port                    = module.kafka.client_port
  to_port                      = module.kafka.client_port
  referenced_security_group_id = aws_security_group.kafka_init.id
}

resource "aws_vpc_security_group_egress_rule" "kafka_init_https" {
  security_group_id = aws_security_group.kafka_init.id
  description       = "kafka-init: HTTPS to AWS APIs and the image registry"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}
