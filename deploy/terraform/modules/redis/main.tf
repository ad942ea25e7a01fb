# ElastiCache for Redis: a primary and replicas across zones with automatic
# failover, TLS in transit, an AUTH token, encryption at rest. Redis holds
# presence, pub/sub, rate limits and the hot inbox (new messages until they are
# acknowledged or moved to MongoDB; Kafka keeps their records until then, and
# their writes wait for a replica: docs/delivery.md, "Redis failover").
# The services get one secret, PARLEY_REDIS_URL = rediss://:<token>@<primary>:6379/0.

resource "aws_security_group" "this" {
  name        = "${var.name}-redis"
  description = "Redis: reached only from the Parley tasks that use Redis"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_elasticache_subnet_group" "this" {
  name       = "${var.name}-redis"
  subnet_ids = var.subnet_ids
  tags       = var.tags
}

# Letters and digits only: the token goes into a URL unescaped.
resource "random_password" "auth" {
  length  = 64
  special = false
}

resource "aws_elasticache_replication_group" "this" {
  replication_group_id       = "${var.name}-redis"
  description                = "Parley presence, pub/sub and rate limits (${var.name})"
  engine                     = "redis"
  engine_version             = var.engine_version
  node_type                  = var.node_type
  num_cache_clusters         = var.node_count
  port                       = 6379
  subnet_group_name          = aws_elasticache_subnet_group.this.name
  security_group_ids         = [aws_security_group.this.id]
  automatic_failover_enabled = true
  multi_az_enabled           = true
  at_rest_encryption_enabled = true
  kms_key_id                 = var.kms_key_arn
  transit_encryption_enabled = true
  auth_token                 = random_password.auth.result
  auto_minor_version_upgrade = true
  snapshot_retention_limit   = var.snapshot_retention_days
  apply_immediately          = false
  tags                       = var.tags
}

resource "aws_secretsmanager_secret" "url" {
  #checkov:skip=CKV2_AWS_57:The AUTH token rotates with ElastiCache's two-token rotation and a new secret version (docs/deployment.md); no rotation Lambda.
  name                    = "${var.name}/redis-url"
  description             = "PARLEY_REDIS_URL: rediss URL with the AUTH token"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = var.secret_recovery_days
  tags                    = var.tags
}

resource "aws_secretsmanager_secret_version" "url" {
  secret_id     = aws_secretsmanager_secret.url.id
  secret_string = "rediss://:${random_password.auth.result}@${aws_elasticache_replication_group.this.primary_endpoint_address}:6379/0"
}
