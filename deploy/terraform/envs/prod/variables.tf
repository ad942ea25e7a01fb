# What differs between deployments of this environment and is not a secret.
# CD passes them as TF_VAR_* from the GitHub environment's variables
# (docs/deployment.md, "Variables"); sizes live in terraform.tfvars.

variable "region" {
  description = "AWS region."
  type        = string
}

variable "availability_zones" {
  description = "Availability zones of the region to span."
  type        = list(string)
}

variable "image_tag" {
  description = "Image tag to deploy (v<version> or sha-<commit>)."
  type        = string
}

variable "ecr_repository_url" {
  description = "ECR repository URL (bootstrap output)."
  type        = string
}

variable "ecr_repository_arn" {
  description = "ECR repository ARN (bootstrap output)."
  type        = string
}

variable "route53_zone_id" {
  description = "Hosted zone of the two host names."
  type        = string
}

variable "api_domain_name" {
  description = "Host name of the API and WebSocket."
  type        = string
}

variable "web_domain_name" {
  description = "Host name of the web client and admin console."
  type        = string
}

variable "smtp_from" {
  description = "Sender of Parley's mails (a verified SES identity)."
  type        = string
}

variable "smtp_credentials_secret_arn" {
  description = "ARN of the SES SMTP credentials secret {username, password}; null for none."
  type        = string
  default     = null
}

variable "external_mongo_url_secret_arn" {
  description = "ARN of a secret with an external MongoDB (Atlas) connection string; null for DocumentDB."
  type        = string
  default     = null
}

variable "kafka_plaintext_bridge" {
  description = "TEMPORARY plaintext Kafka inside the VPC until the services speak SASL_SSL (docs/deployment.md)."
  type        = bool
  default     = false
}
