# Amazon MSK: brokers in the private subnets, TLS between clients and brokers
# and inside the cluster, SASL/SCRAM client authentication with credentials in
# Secrets Manager, encryption at rest with the environment's key, broker logs
# in CloudWatch. Consumer-lag metrics (SumOffsetLag per consumer group and
# topic) come at the DEFAULT monitoring level and drive delivery's scaling.

locals {
  scram_port     = 9096
  plaintext_port = 9092
  replication    = min(3, var.broker_count)
  min_isr        = local.replication >= 3 ? 2 : 1
}

resource "aws_security_group" "this" {
  name        = "${var.name}-msk"
  description = "Kafka brokers: reached only from the Parley tasks that use Kafka"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_msk_configuration" "this" {
  name           = "${var.name}-parley"
  kafka_versions = [var.kafka_version]

  # Topics are created explicitly (the services, or the kafka-init task, with
  # this replication); nothing relies on auto-creation.
  server_properties = <<-PROPERTIES
    auto.create.topics.enable=false
    default.replication.factor=${local.replication}
    min.insync.replicas=${local.min_isr}
    num.partitions=${var.partitions}
    unclean.leader.election.enable=false
  PROPERTIES
}

resource "aws_cloudwatch_log_group" "broker" {
  #checkov:skip=CKV_AWS_338:Broker logs are kept var.log_retention_days to bound cost; raise it where an audit needs a year.
  name              = "/parley/${var.name}/msk"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_msk_cluster" "this" {
  cluster_name           = var.name
  kafka_version          = var.kafka_version
  number_of_broker_nodes = var.broker_count
  enhanced_monitoring    = "DEFAULT"
  tags                   = var.tags

  broker_node_group_info {
    instance_type   = var.instance_type
    client_subnets  = var.subnet_ids
    security_groups = [aws_security_group.this.id]

    storage_info {
      ebs_storage_info {
        volume_size = var.volume_size_gb
      }
    }
  }

  configuration_info {
    arn      = aws_msk_configuration.this.arn
    revision = aws_msk_configuration.this.latest_revision
  }

  encryption_info {
    encryption_at_rest_kms_key_arn = var.kms_key_arn
    encryption_in_transit {
      # TLS_PLAINTEXT only while var.plaintext_bridge is on (docs/deployment.md).
      client_broker = var.plaintext_bridge ? "TLS_PLAINTEXT" : "TLS"
      in_cluster    = true
    }
  }

  client_authentication {
    unauthenticated = var.plaintext_bridge
    sasl {
      scram = true
    }
  }

  logging_info {
    broker_logs {
      cloudwatch_logs {
        enabled   = true
        log_group = aws_cloudwatch_log_group.broker.name
      }
    }
  }
}

# SCRAM credentials: MSK requires the AmazonMSK_ name prefix and a
# customer-managed key.
resource "random_password" "scram" {
  length  = 48
  special = false
}

resource "aws_secretsmanager_secret" "scram" {
  #checkov:skip=CKV2_AWS_57:MSK SCRAM credentials rotate by a new secret version and a rolling task restart (docs/deployment.md); no rotation Lambda.
  name                    = "AmazonMSK_${var.name}-parley"
  description             = "SASL/SCRAM user of the Parley services on MSK ${var.name}"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = var.secret_recovery_days
  tags                    = var.tags
}

resource "aws_secretsmanager_secret_version" "scram" {
  secret_id = aws_secretsmanager_secret.scram.id
  secret_string = jsonencode({
    username = "parley"
    password = random_password.scram.result
  })
}

resource "aws_msk_scram_secret_association" "this" {
  cluster_arn     = aws_msk_cluster.this.arn
  secret_arn_list = [aws_secretsmanager_secret.scram.arn]
  depends_on      = [aws_secretsmanager_secret_version.scram]
}
