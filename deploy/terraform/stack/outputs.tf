# Identifiers only: no output carries a secret value.

output "api_url" {
  description = "Public base URL of the API; the WebSocket is wss://<host>/ws."
  value       = module.alb.api_url
}

output "web_url" {
  description = "URL of the web client (the admin console is under /admin/)."
  value       = module.static_site.url
}

output "web_bucket" {
  description = "Bucket the CD uploads the web client to."
  value       = module.static_site.bucket
}

output "web_distribution_id" {
  description = "CloudFront distribution to invalidate after an upload."
  value       = module.static_site.distribution_id
}

output "cluster_name" {
  description = "ECS cluster."
  value       = module.cluster.name
}

output "service_names" {
  description = "ECS service by component."
  value       = { for k, s in module.service : k => s.service_name }
}

output "log_groups" {
  description = "Log group by component."
  value       = { for k, s in module.service : k => s.log_group }
}

output "prometheus_endpoint" {
  description = "Amazon Managed Prometheus endpoint (Grafana's datasource); null without managed_prometheus."
  value       = var.managed_prometheus ? module.monitoring[0].prometheus_endpoint : null
}

output "kafka_init_task_definition" {
  description = "Task definition that creates the topics (run_task.sh runs it)."
  value       = aws_ecs_task_definition.kafka_init.arn
}

output "kafka_init_security_group" {
  description = "Security group for the kafka-init task."
  value       = aws_security_group.kafka_init.id
}

output "private_subnet_ids" {
  description = "Private subnets (for one-off tasks)."
  value       = module.network.private_subnet_ids
}

output "secret_arns" {
  description = "ARNs (not values) of the secrets the tasks read."
  value = {
    mongo_url             = local.mongo_secret
    redis_url             = module.redis.url_secret_arn
    kafka_scram           = module.kafka.scram_secret_arn
    key_encryption_secret = aws_secretsmanager_secret.key_encryption.arn
    franking_key          = aws_secretsmanager_secret.franking.arn
  }
}
