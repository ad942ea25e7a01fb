# Metrics and alerts on AWS: the Prometheus jobs of deploy/prometheus/prometheus.yml
# (one per component, on /<name>/metrics), scraped from every task by a
# collector into Amazon Managed Prometheus, which evaluates
# deploy/prometheus/alerts.yml. (The gateway's autoscaling metric goes to
# CloudWatch by its own sidecar: modules/ecs_service.)

module "monitoring" {
  source = "../modules/monitoring"
  count  = var.managed_prometheus ? 1 : 0

  name         = local.name
  cluster_arn  = module.cluster.arn
  cluster_name = module.cluster.name
  vpc_id       = module.network.vpc_id
  subnet_ids   = module.network.private_subnet_ids
  targets = {
    for name, c in local.enabled : name => { service_name = module.service[name].service_name, port = c.port }
  }
  rules              = file("${path.module}/../../prometheus/alerts.yml")
  log_retention_days = var.log_retention_days
  kms_key_arn        = module.kms.key_arn
  tags               = local.tags
}
