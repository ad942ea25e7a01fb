# Production: three zones, a NAT gateway per zone, interface endpoints,
# three Kafka brokers (replication 3, min ISR 2), Redis and DocumentDB with a
# replica in each zone, deletion protection.

module "stack" {
  source = "../../stack"
  providers = {
    aws           = aws
    aws.us_east_1 = aws.us_east_1
  }

  environment        = "prod"
  availability_zones = var.availability_zones
  vpc_cidr           = var.vpc_cidr

  ecr_repository_url = var.ecr_repository_url
  ecr_repository_arn = var.ecr_repository_arn
  image_tag          = var.image_tag

  route53_zone_id = var.route53_zone_id
  api_domain_name = var.api_domain_name
  web_domain_name = var.web_domain_name

  single_nat_gateway  = false
  interface_endpoints = ["ecr.api", "ecr.dkr", "secretsmanager", "logs"]
  deletion_protection = true
  log_retention_days  = 90

  kafka_broker_count     = 3
  kafka_instance_type    = var.kafka_instance_type
  kafka_volume_size_gb   = 500
  kafka_partitions       = 24
  kafka_plaintext_bridge = var.kafka_plaintext_bridge
  redis_node_type        = var.redis_node_type
  redis_node_count       = 3
  docdb_instance_class   = var.docdb_instance_class
  docdb_instance_count   = 3

  external_mongo_url_secret_arn = var.external_mongo_url_secret_arn

  smtp_host                   = "email-smtp.${var.region}.amazonaws.com"
  smtp_from                   = var.smtp_from
  smtp_credentials_secret_arn = var.smtp_credentials_secret_arn

  gateway_connections_per_task = var.gateway_connections_per_task
  sizes                        = var.sizes
}

variable "vpc_cidr" {
  description = "The VPC's address range."
  type        = string
  default     = "10.50.0.0/16"
}

variable "kafka_instance_type" {
  description = "MSK broker instance type."
  type        = string
  default     = "kafka.m5.large"
}

variable "redis_node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.r7g.large"
}

variable "docdb_instance_class" {
  description = "DocumentDB instance class."
  type        = string
  default     = "db.r6g.large"
}

variable "gateway_connections_per_task" {
  description = "Target of open WebSockets per gateway task."
  type        = number
  default     = 2000
}

variable "sizes" {
  description = "Per-component cpu, memory, min and max tasks."
  type = map(object({
    cpu    = number
    memory = number
    min    = number
    max    = number
  }))
  default = {}
}
