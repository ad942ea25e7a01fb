# The ECS cluster (Fargate only, Container Insights on: the delivery scaling
# policy divides Kafka lag by its RunningTaskCount) and the private DNS
# namespace in which the services find each other (auth.<namespace>, ...).

resource "aws_ecs_cluster" "this" {
  name = var.name
  tags = var.tags

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = ["FARGATE", "FARGATE_SPOT"]

  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
    base              = 1
  }
}

resource "aws_service_discovery_private_dns_namespace" "this" {
  name        = var.namespace
  description = "Parley services of ${var.name}"
  vpc         = var.vpc_id
  tags        = var.tags
}
