output "cluster_name" {
  description = "MSK cluster name (the \"Cluster Name\" dimension of its metrics)."
  value       = aws_msk_cluster.this.cluster_name
}

output "cluster_arn" {
  description = "MSK cluster ARN."
  value       = aws_msk_cluster.this.arn
}

output "bootstrap_brokers" {
  description = "Bootstrap servers the services use: SASL/SCRAM over TLS (plaintext only while the bridge is on)."
  value       = var.plaintext_bridge ? aws_msk_cluster.this.bootstrap_brokers : aws_msk_cluster.this.bootstrap_brokers_sasl_scram
}

output "client_port" {
  description = "The broker port clients connect to."
  value       = var.plaintext_bridge ? local.plaintext_port : local.scram_port
}

output "security_protocol" {
  description = "Kafka security protocol the clients must use."
  value       = var.plaintext_bridge ? "PLAINTEXT" : "SASL_SSL"
}

output "security_group_id" {
  description = "The brokers' security group."
  value       = aws_security_group.this.id
}

output "scram_secret_arn" {
  description = "ARN (not the value) of the SCRAM credentials secret, JSON {username, password}."
  value       = aws_secretsmanager_secret.scram.arn
}
