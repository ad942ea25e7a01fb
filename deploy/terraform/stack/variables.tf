# Inputs of one environment. No secret is an input: secrets are generated
# into Secrets Manager (or, for SMTP and an external MongoDB, referenced by
# the ARN of a secret the operator created).

variable "environment" {
  description = "Environment name: staging, prod, ... (prefixes every resource: parley-<environment>)."
  type        = string
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}

# --- image -----------------------------------------------------------------------

variable "ecr_repository_url" {
  description = "ECR repository of the parley image (from the bootstrap root)."
  type        = string
}

variable "ecr_repository_arn" {
  description = "ARN of that repository (the execution roles may pull from it only)."
  type        = string
}

variable "image_tag" {
  description = "Image tag to run: the release version (e.g. 0.2.0) or the commit SHA. CD sets it."
  type        = string
}

# --- DNS -------------------------------------------------------------------------

variable "route53_zone_id" {
  description = "Route 53 hosted zone holding api_domain_name and web_domain_name."
  type        = string
}

variable "api_domain_name" {
  description = "Host name of the API and WebSocket (the ALB), e.g. api.staging.parley.example."
  type        = string
}

variable "web_domain_name" {
  description = "Host name of the web client and admin console (CloudFront), e.g. app.staging.parley.example."
  type        = string
}

# --- network -----------------------------------------------------------------------

variable "vpc_cidr" {
  description = "The VPC's address range."
  type        = string
  default     = "10.40.0.0/16"
}

variable "availability_zones" {
  description = "Availability zones (at least two)."
  type        = list(string)
}

variable "single_nat_gateway" {
  description = "One NAT gateway instead of one per zone (cheaper, not zone-redundant)."
  type        = bool
  default     = false
}

variable "interface_endpoints" {
  description = "Interface VPC endpoints (ECR, Secrets Manager, CloudWatch Logs) so that AWS API traffic skips the NAT; empty to use the NAT only."
  type        = list(string)
  default     = ["ecr.api", "ecr.dkr", "secretsmanager", "logs"]
}

# --- sizes and scaling -----------------------------------------------------------

variable "sizes" {
  description = "Per-component overrides of cpu, memory, min and max tasks (components.tf has the defaults)."
  type = map(object({
    cpu    = number
    memory = number
    min    = number
    max    = number
  }))
  default = {}
}

variable "gateway_connections_per_task" {
  description = "Target of open WebSockets per gateway task (parley_gateway_connections averaged over tasks)."
  type        = number
  default     = 2000
}

variable "gateway_deregistration_delay" {
  description = "Seconds the ALB keeps a removed gateway's sockets before closing them; ECS sends SIGTERM (the gateway's drain) after it."
  type        = number
  default     = 30
}

variable "kafka_lag_per_task" {
  description = "Target of unprocessed records (consumer-group lag) per delivery task."
  type        = number
  default     = 1000
}

variable "requests_per_target_per_minute" {
  description = "Target of ALB requests per task per minute for the HTTP components."
  type        = number
  default     = 3000
}

variable "cpu_target_percent" {
  description = "Target average CPU of every component."
  type        = number
  default     = 60
}

variable "metrics_namespace" {
  description = "CloudWatch namespace of the metrics the sidecars publish."
  type        = string
  default     = "Parley"
}

# --- data stores -------------------------------------------------------------------

variable "kafka_version" {
  description = "Apache Kafka version on MSK."
  type        = string
  default     = "3.6.0"
}

variable "kafka_broker_count" {
  description = "MSK brokers (a multiple of the number of zones)."
  type        = number
  default     = 2
}

variable "kafka_instance_type" {
  description = "MSK broker instance type."
  type        = string
  default     = "kafka.t3.small"
}

variable "kafka_volume_size_gb" {
  description = "EBS storage per broker, in GB."
  type        = number
  default     = 100
}

variable "kafka_partitions" {
  description = "Partitions of Parley's topics (PARLEY_KAFKA_PARTITIONS): the most delivery tasks that consume in parallel."
  type        = number
  default     = 12
}

variable "kafka_plaintext_bridge" {
  description = "TEMPORARY: let the services reach MSK in plaintext inside the VPC until they speak SASL_SSL (docs/deployment.md). Keep false."
  type        = bool
  default     = false
}

variable "run_kafka_init" {
  description = "Run the kafka-init task (AWS CLI needed where terraform runs) before the services start."
  type        = bool
  default     = true
}

variable "redis_node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.t4g.small"
}

variable "redis_node_count" {
  description = "ElastiCache nodes (primary + replicas; 2+ for failover)."
  type        = number
  default     = 2
}

variable "docdb_instance_class" {
  description = "DocumentDB instance class."
  type        = string
  default     = "db.t4g.medium"
}

variable "docdb_instance_count" {
  description = "DocumentDB instances (writer + readers)."
  type        = number
  default     = 2
}

variable "docdb_ca_bundle_url" {
  description = "Where tasks download the RDS CA bundle that DocumentDB's TLS certificates chain to."
  type        = string
  default     = "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem"
}

variable "external_mongo_url_secret_arn" {
  description = "Use an external MongoDB (e.g. Atlas) instead of DocumentDB: ARN of a secret holding its full connection string. null creates DocumentDB."
  type        = string
  default     = null
}

variable "external_mongo_cidr" {
  description = "Address range of the external MongoDB (Atlas peering or PrivateLink range) that tasks may reach on 27017."
  type        = string
  default     = "10.0.0.0/8"
}

# --- mail ----------------------------------------------------------------------------

variable "smtp_host" {
  description = "SMTP server (SES: email-smtp.<region>.amazonaws.com)."
  type        = string
}

variable "smtp_port" {
  description = "SMTP submission port (STARTTLS)."
  type        = number
  default     = 587
}

variable "smtp_from" {
  description = "Sender of Parley's mails, a verified SES identity."
  type        = string
}

variable "smtp_credentials_secret_arn" {
  description = "ARN of a secret {\"username\": ..., \"password\": ...} with SMTP credentials (SES SMTP user); null for none."
  type        = string
  default     = null
}

# --- operations ----------------------------------------------------------------------

variable "log_level" {
  description = "PARLEY_LOG_LEVEL of the services."
  type        = string
  default     = "INFO"
}

variable "log_retention_days" {
  description = "Days to keep service logs."
  type        = number
  default     = 30
}

variable "managed_prometheus" {
  description = "Amazon Managed Prometheus with the alert rules of deploy/prometheus/alerts.yml, and a collector scraping every task (monitoring.tf)."
  type        = bool
  default     = true
}

variable "deletion_protection" {
  description = "Protect the ALB and DocumentDB from deletion and keep non-empty buckets (false only for throw-away environments)."
  type        = bool
  default     = true
}
