output "workspace_id" {
  description = "The Amazon Managed Prometheus workspace."
  value       = aws_prometheus_workspace.this.id
}

output "prometheus_endpoint" {
  description = "Its Prometheus-compatible endpoint (query with SigV4; the datasource of Amazon Managed Grafana)."
  value       = aws_prometheus_workspace.this.prometheus_endpoint
}

output "security_group_id" {
  description = "The collector's security group (source of the scrapes)."
  value       = aws_security_group.collector.id
}
