output "api_url" {
  description = "Public base URL of the API (the smoke test's target)."
  value       = module.stack.api_url
}

output "web_url" {
  description = "URL of the web client."
  value       = module.stack.web_url
}

output "web_bucket" {
  description = "Bucket of the web client's files."
  value       = module.stack.web_bucket
}

output "web_distribution_id" {
  description = "CloudFront distribution of the web client."
  value       = module.stack.web_distribution_id
}

output "cluster_name" {
  description = "ECS cluster."
  value       = module.stack.cluster_name
}

output "service_names" {
  description = "ECS service by component."
  value       = module.stack.service_names
}

output "prometheus_endpoint" {
  description = "Amazon Managed Prometheus endpoint (Grafana's datasource)."
  value       = module.stack.prometheus_endpoint
}
