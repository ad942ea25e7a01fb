output "security_group_id" {
  description = "DocumentDB's security group."
  value       = aws_security_group.this.id
}

output "port" {
  description = "DocumentDB port."
  value       = local.port
}

output "url_secret_arn" {
  description = "ARN (not the value) of the PARLEY_MONGO_URL secret."
  value       = aws_secretsmanager_secret.url.arn
}

output "endpoint" {
  description = "Cluster (writer) endpoint host name."
  value       = aws_docdb_cluster.this.endpoint
}
