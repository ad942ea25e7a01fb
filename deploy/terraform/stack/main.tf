# One Parley environment on AWS: network, edge (ALB + WAF, CloudFront for the
# static web client), managed Kafka/Redis/MongoDB, secrets, the ECS cluster
# and one Fargate service per component (components.tf).

data "aws_region" "current" {}

locals {
  name = "parley-${var.environment}"
  tags = merge(var.tags, {
    Project     = "parley"
    Environment = var.environment
    ManagedBy   = "terraform"
  })
  region = data.aws_region.current.name
}

module "kms" {
  source = "../modules/kms"
  name   = local.name
  tags   = local.tags
}

module "network" {
  source = "../modules/network"

  name                = local.name
  cidr_block          = var.vpc_cidr
  availability_zones  = var.availability_zones
  single_nat_gateway  = var.single_nat_gateway
  interface_endpoints = var.interface_endpoints
  kms_key_arn         = module.kms.key_arn
  tags                = local.tags
}

module "cluster" {
  source = "../modules/ecs_cluster"

  name      = local.name
  namespace = "${local.name}.internal"
  vpc_id    = module.network.vpc_id
  tags      = local.tags
}

module "alb" {
  source = "../modules/alb"

  name              = local.name
  vpc_id            = module.network.vpc_id
  public_subnet_ids = module.network.public_subnet_ids
  domain_name       = var.api_domain_name
  route53_zone_id   = var.route53_zone_id
  default_route     = local.default_component
  routes = {
    for name, c in local.enabled : name => {
      port                 = c.port
      health_path          = "/${name}/startedz"
      paths                = c.paths
      priority             = c.priority
      deregistration_delay = name == "gateway" ? var.gateway_deregistration_delay : 30
      # WebSockets are long-lived: send new ones where the fewest requests are
      # outstanding (HAProxy balances them with leastconn).
      algorithm = c.scaling == "connections" ? "least_outstanding_requests" : "round_robin"
    } if length(c.paths) > 0 || name == local.default_component
  }
  deletion_protection = var.deletion_protection
  log_retention_days  = var.log_retention_days
  # The web apps call the API from CloudFront's domain: the WAF's 429 names it too.
  cors_origin   = lower(module.static_site.url) # as browsers send it
  kms_key_arn   = module.kms.key_arn
  force_destroy = !var.deletion_protection
  tags          = local.tags
}

module "kafka" {
  source = "../modules/kafka"

  name             = local.name
  vpc_id           = module.network.vpc_id
  subnet_ids       = module.network.private_subnet_ids
  kafka_version    = var.kafka_version
  broker_count     = var.kafka_broker_count
  instance_type    = var.kafka_instance_type
  volume_size_gb   = var.kafka_volume_size_gb
  partitions       = var.kafka_partitions
  plaintext_bridge = var.kafka_plaintext_bridge
  kms_key_arn      = module.kms.key_arn
  tags             = local.tags
}

module "redis" {
  source = "../modules/redis"

  name        = local.name
  vpc_id      = module.network.vpc_id
  subnet_ids  = module.network.private_subnet_ids
  node_type   = var.redis_node_type
  node_count  = var.redis_node_count
  kms_key_arn = module.kms.key_arn
  tags        = local.tags
}

# DocumentDB unless an external MongoDB (Atlas) URL secret is given.
module "documentdb" {
  source = "../modules/documentdb"
  count  = var.external_mongo_url_secret_arn == null ? 1 : 0

  name                = local.name
  vpc_id              = module.network.vpc_id
  subnet_ids          = module.network.private_subnet_ids
  instance_class      = var.docdb_instance_class
  instance_count      = var.docdb_instance_count
  deletion_protection = var.deletion_protection
  ca_file_path        = "${local.ca_bundle.directory}/${local.ca_bundle.file}"
  kms_key_arn         = module.kms.key_arn
  tags                = local.tags
}

locals {
  ca_bundle = {
    url       = var.docdb_ca_bundle_url
    directory = "/certs"
    file      = "rds-global-bundle.pem"
  }
  uses_documentdb = var.external_mongo_url_secret_arn == null
  mongo_secret    = local.uses_documentdb ? module.documentdb[0].url_secret_arn : var.external_mongo_url_secret_arn
}

module "static_site" {
  source = "../modules/static_site"
  providers = {
    aws           = aws
    aws.us_east_1 = aws.us_east_1
  }

  name            = local.name
  domain_name     = var.web_domain_name
  api_domain_name = var.api_domain_name
  route53_zone_id = var.route53_zone_id
  force_destroy   = !var.deletion_protection
  tags            = local.tags
}

# --- application secrets: generated here, stored in Secrets Manager, injected
# into tasks by ECS. Values never appear in outputs or variable defaults; the
# state holds them, so the state bucket is encrypted and access-restricted.

resource "random_password" "key_encryption" {
  length  = 48
  special = false
}

resource "aws_secretsmanager_secret" "key_encryption" {
  #checkov:skip=CKV2_AWS_57:Rotating it means re-encrypting the stored signing keys (docs/auth.md); done by hand with a new version, not by a rotation Lambda.
  name                    = "${local.name}/key-encryption-secret"
  description             = "PARLEY_KEY_ENCRYPTION_SECRET: encrypts the auth service's signing keys at rest"
  kms_key_id              = module.kms.key_arn
  recovery_window_in_days = 7
  tags                    = local.tags
}

resource "aws_secretsmanager_secret_version" "key_encryption" {
  secret_id     = aws_secretsmanager_secret.key_encryption.id
  secret_string = random_password.key_encryption.result

  # Rotated by hand (docs/deployment.md); terraform does not put it back.
  lifecycle {
    ignore_changes = [secret_string]
  }
}

# The delivery service's franking secret (docs/moderation-messages.md): the
# franking tags' HMAC key and the tombstones' signing key derive from it. JSON:
# "key" (PARLEY_FRANKING_KEY), "kid" (PARLEY_FRANKING_KEY_ID, the id every tag
# and tombstone names) and "retired" (PARLEY_FRANKING_RETIRED_KEYS, "id:secret,..."
# of keys that verify but do not sign). The key and its id are one secret version,
# so that a task never reads a new key under the old id. Rotated by hand in two
# steps (docs/deployment.md, "Rotating the franking key").
resource "random_password" "franking" {
  length  = 48
  special = false
}

resource "aws_secretsmanager_secret" "franking" {
  #checkov:skip=CKV2_AWS_57:Rotating it means publishing the next key under a new id, then signing with it (docs/deployment.md); done by hand with new versions, not by a rotation Lambda.
  name                    = "${local.name}/franking-key"
  description             = "PARLEY_FRANKING_KEY, PARLEY_FRANKING_KEY_ID and PARLEY_FRANKING_RETIRED_KEYS: franking tags and tombstone signatures"
  kms_key_id              = module.kms.key_arn
  recovery_window_in_days = 7
  tags                    = local.tags
}

resource "aws_secretsmanager_secret_version" "franking" {
  secret_id     = aws_secretsmanager_secret.franking.id
  secret_string = jsonencode({ key = random_password.franking.result, kid = "1", retired = "" })

  # Rotated by hand (docs/deployment.md); terraform does not put it back.
  lifecycle {
    ignore_changes = [secret_string]
  }
}
