output "security_group_id" {
  description = "Redis's security group."
  value       = aws_security_group.this.id
}

output "port" {
  description = "Redis port."
  value       = 6379
}

output "url_secret_arn" {
  description = "ARN (not the value) of the PARLEY_REDIS_URL secret."
  value       = aws_secretsmanager_secret.url.arn
}

output "replication_group_id" {
  description = "The replication group."
  value       = aws_elasticache_replication_group.this.id
}
