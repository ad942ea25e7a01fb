variable "name" {
  description = "Name prefix, e.g. parley-staging."
  type        = string
}

variable "cluster_arn" {
  description = "The ECS cluster of the components (the collector runs there too)."
  type        = string
}

variable "cluster_name" {
  description = "Its name: the collector discovers the components' tasks in it."
  type        = string
}

variable "vpc_id" {
  description = "The VPC."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the collector task."
  type        = list(string)
}

variable "targets" {
  description = "What to scrape, by component (the Prometheus job name): its ECS service and port; the path is /<component>/metrics."
  type = map(object({
    service_name = string
    port         = number
  }))
}

variable "rules" {
  description = "Prometheus alerting rules (YAML, deploy/prometheus/alerts.yml) that the workspace evaluates."
  type        = string
}

variable "scrape_interval" {
  description = "How often the collector scrapes every task (deploy/prometheus/prometheus.yml: 15s)."
  type        = string
  default     = "15s"
}

variable "collector_image" {
  description = "AWS Distro for OpenTelemetry collector image."
  type        = string
  default     = "public.ecr.aws/aws-observability/aws-otel-collector:v0.43.3"
}

variable "log_retention_days" {
  description = "Days to keep the collector's and the workspace's logs."
  type        = number
  default     = 30
}

variable "kms_key_arn" {
  description = "Key for the workspace's data and the log groups."
  type        = string
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
