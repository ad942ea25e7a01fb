# Amazon DocumentDB (MongoDB-compatible): instances across zones, TLS
# required, encryption at rest, audit and profiler logs, backups, deletion
# protection. The services get one secret, PARLEY_MONGO_URL, a connection
# string that points at the RDS CA bundle the task's `certs` init container
# downloads into /certs (DocumentDB's certificates are not in public trust
# stores). MongoDB Atlas instead: docs/deployment.md.

locals {
  port = 27017
}

resource "aws_security_group" "this" {
  name        = "${var.name}-docdb"
  description = "DocumentDB: reached only from the Parley tasks that use MongoDB"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_docdb_subnet_group" "this" {
  name       = "${var.name}-docdb"
  subnet_ids = var.subnet_ids
  tags       = var.tags
}

resource "aws_docdb_cluster_parameter_group" "this" {
  name        = "${var.name}-docdb"
  family      = var.parameter_group_family
  description = "Parley: TLS required, audit and profiler logs"
  tags        = var.tags

  parameter {
    name  = "tls"
    value = "enabled"
  }

  parameter {
    name  = "audit_logs"
    value = "enabled"
  }

  parameter {
    name  = "profiler"
    value = "enabled"
  }

  parameter {
    name  = "profiler_threshold_ms"
    value = "200"
  }
}

resource "aws_cloudwatch_log_group" "exports" {
  #checkov:skip=CKV_AWS_338:Database audit and profiler logs are kept var.log_retention_days to bound cost; raise it where an audit needs a year.
  for_each          = toset(["audit", "profiler"])
  name              = "/aws/docdb/${var.name}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

# Letters and digits only: the password goes into a URL unescaped.
resource "random_password" "master" {
  length  = 40
  special = false
}

resource "aws_docdb_cluster" "this" {
  cluster_identifier              = var.name
  engine                          = "docdb"
  engine_version                  = var.engine_version
  master_username                 = "parley"
  master_password                 = random_password.master.result
  db_subnet_group_name            = aws_docdb_subnet_group.this.name
  db_cluster_parameter_group_name = aws_docdb_cluster_parameter_group.this.name
  vpc_security_group_ids          = [aws_security_group.this.id]
  port                            = local.port
  storage_encrypted               = true
  kms_key_id                      = var.kms_key_arn
  backup_retention_period         = var.backup_retention_days
  preferred_backup_window         = "02:00-03:00"
  enabled_cloudwatch_logs_exports = ["audit", "profiler"]
  deletion_protection             = var.deletion_protection
  skip_final_snapshot             = false
  apply_immediately               = false
  tags                            = var.tags

  # A snapshot name is unique in the account and region: a fixed one made the
  # second `terraform destroy` of an environment fail (the first one's snapshot
  # exists). Stamped with the cluster's creation time instead, kept in the state
  # (ignore_changes: timestamp() differs at every plan) and used at its destroy.
  final_snapshot_identifier = "${var.name}-final-${formatdate("YYYYMMDDhhmmss", timestamp())}"

  lifecycle {
    ignore_changes = [final_snapshot_identifier]
  }

  depends_on = [aws_cloudwatch_log_group.exports]
}

resource "aws_docdb_cluster_instance" "this" {
  count                      = var.instance_count
  identifier                 = "${var.name}-${count.index}"
  cluster_identifier         = aws_docdb_cluster.this.id
  instance_class             = var.instance_class
  auto_minor_version_upgrade = true
  tags                       = var.tags
}

resource "aws_secretsmanager_secret" "url" {
  #checkov:skip=CKV2_AWS_57:The master password rotates by a new secret version and a rolling task restart (docs/deployment.md); no rotation Lambda.
  name                    = "${var.name}/mongo-url"
  description             = "PARLEY_MONGO_URL: DocumentDB connection string with credentials"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = var.secret_recovery_days
  tags                    = var.tags
}

# retryWrites=false: DocumentDB has no retryable writes (the services set it too).
resource "aws_secretsmanager_secret_version" "url" {
  secret_id     = aws_secretsmanager_secret.url.id
  secret_string = "mongodb://parley:${random_password.master.result}@${aws_docdb_cluster.this.endpoint}:${local.port}/?tls=true&tlsCAFile=${var.ca_file_path}&replicaSet=rs0&retryWrites=false"
}
