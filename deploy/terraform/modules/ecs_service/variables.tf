variable "name_prefix" {
  description = "Environment prefix, e.g. parley-staging."
  type        = string
}

variable "name" {
  description = "Component name: auth, keys, gateway, ... (its path prefix /<name>/ and log group)."
  type        = string
}

variable "module" {
  description = "The Python module the container runs with `python -m`, e.g. services.auth."
  type        = string
}

variable "unique_id_env" {
  description = "Environment variable that gets a per-task id before the module starts (PARLEY_GATEWAY_ID for gateways); empty for none."
  type        = string
  default     = ""
}

variable "unique_id_prefix" {
  description = "Prefix of the per-task id, e.g. gw-."
  type        = string
  default     = ""
}

variable "image" {
  description = "Container image (the one image built by the Dockerfile), by tag or digest."
  type        = string
}

variable "ecr_repository_arn" {
  description = "ECR repository the image is pulled from."
  type        = string
}

variable "port" {
  description = "Port the component listens on (PARLEY_PORT)."
  type        = number
}

variable "cpu" {
  description = "Task CPU units (1024 = 1 vCPU)."
  type        = number
}

variable "memory" {
  description = "Task memory in MiB."
  type        = number
}

variable "min_count" {
  description = "Fewest tasks."
  type        = number
}

variable "max_count" {
  description = "Most tasks."
  type        = number
}

variable "stop_timeout" {
  description = "Seconds between SIGTERM and SIGKILL (gateways send `reconnect` and close their sockets in this time; at most 120 on Fargate)."
  type        = number
  default     = 30
}

variable "environment" {
  description = "Plain environment variables (no secrets)."
  type        = map(string)
  default     = {}
}

variable "secret_env_arns" {
  description = "Environment variables injected from Secrets Manager: name -> secret ARN (optionally ARN:json-key::). ARNs only, never values."
  type        = map(string)
  default     = {}
}

variable "secret_arns" {
  description = "The secrets' ARNs, for the execution role's policy."
  type        = list(string)
  default     = []
}

variable "ca_bundle" {
  description = "Download a CA bundle into a task volume before the app starts (DocumentDB); null for none."
  type = object({
    url       = string
    directory = string
    file      = string
  })
  default = null
}

variable "cluster_arn" {
  description = "ECS cluster ARN."
  type        = string
}

variable "cluster_name" {
  description = "ECS cluster name."
  type        = string
}

variable "namespace_id" {
  description = "Private DNS namespace for service discovery."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the tasks."
  type        = list(string)
}

variable "security_group_id" {
  description = "The component's own security group."
  type        = string
}

variable "target_group_arn" {
  description = "ALB target group, or null for a component with no public route."
  type        = string
  default     = null
}

variable "target_group_arn_suffix" {
  description = "Target group ARN suffix (request-count scaling)."
  type        = string
  default     = ""
}

variable "alb_arn_suffix" {
  description = "ALB ARN suffix (request-count scaling)."
  type        = string
  default     = ""
}

variable "published_metrics" {
  description = "Prometheus metric names the CloudWatch agent sidecar publishes to CloudWatch; empty for no sidecar."
  type        = list(string)
  default     = []
}

variable "metrics_namespace" {
  description = "CloudWatch namespace of the published metrics."
  type        = string
  default     = "Parley"
}

variable "cloudwatch_agent_image" {
  description = "CloudWatch agent image of the metrics sidecar."
  type        = string
  default     = "public.ecr.aws/cloudwatch-agent/cloudwatch-agent:1.300062.0b1304"
}

variable "kafka_cluster_name" {
  description = "MSK cluster name (the lag metric's dimension)."
  type        = string
  default     = ""
}

variable "scaling" {
  description = "Autoscaling: kind (http, connections, kafka_lag or cpu) and the targets."
  type = object({
    kind                 = string
    cpu_target           = number
    requests_per_target  = number
    connections_metric   = string
    connections_per_task = number
    consumer_group       = string
    topic                = string
    lag_per_task         = number
    scale_in_cooldown    = number
  })

  validation {
    condition     = contains(["http", "connections", "kafka_lag", "cpu"], var.scaling.kind)
    error_message = "scaling.kind is one of http, connections, kafka_lag, cpu."
  }
}

variable "log_retention_days" {
  description = "Days to keep the component's logs."
  type        = number
  default     = 30
}

variable "kms_key_arn" {
  description = "Key of the log groups and the secrets."
  type        = string
}

variable "wait_for_steady_state" {
  description = "Make terraform apply wait until the service's deployment is stable."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
