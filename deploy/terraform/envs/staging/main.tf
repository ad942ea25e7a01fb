# Staging: the same stack as prod, smaller and cheaper (one NAT gateway, no
# interface endpoints, burstable data-store nodes, one task where prod has
# two), and disposable (no deletion protection).

module "stack" {
  source = "../../stack"
  providers = {
    aws           = aws
    aws.us_east_1 = aws.us_east_1
  }

  environment        = "staging"
  availability_zones = var.availability_zones
  vpc_cidr           = var.vpc_cidr

  ecr_repository_url = var.ecr_repository_url
  ecr_repository_arn = var.ecr_repository_arn
  image_tag          = var.image_tag

  route53_zone_id = var.route53_zone_id
  api_domain_name = var.api_domain_name
  web_domain_name = var.web_domain_name

  single_nat_gateway  = true
  interface_endpoints = []
  deletion_protection = false
  log_retention_days  = 14

  kafka_broker_count     = 2
  kafka_instance_type    = "kafka.t3.small"
  kafka_volume_size_gb   = 20
  kafka_partitions       = 4
  kafka_plaintext_bridge = var.kafka_plaintext_bridge
  redis_node_type        = "cache.t4g.micro"
  redis_node_count       = 2
  docdb_instance_class   = "db.t4g.medium"
  docdb_instance_count   = 1

  external_mongo_url_secret_arn = var.external_mongo_url_secret_arn

  smtp_host                   = "email-smtp.${var.region}.amazonaws.com"
  smtp_from                   = var.smtp_from
  smtp_credentials_secret_arn = var.smtp_credentials_secret_arn

  sizes = var.sizes
}

variable "vpc_cidr" {
  description = "The VPC's address range."
  type        = string
  default     = "10.40.0.0/16"
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
