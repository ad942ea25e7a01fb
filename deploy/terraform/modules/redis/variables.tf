variable "name" {
  description = "Name prefix, e.g. parley-staging."
  type        = string
}

variable "vpc_id" {
  description = "The VPC."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets."
  type        = list(string)
}

variable "engine_version" {
  description = "Redis engine version."
  type        = string
  default     = "7.1"
}

variable "node_type" {
  description = "Cache node type."
  type        = string
  default     = "cache.t4g.small"
}

variable "node_count" {
  description = "Primary plus replicas, across zones (automatic failover needs at least 2)."
  type        = number
  default     = 2

  validation {
    condition     = var.node_count >= 2
    error_message = "Use at least two nodes: a primary and a replica in another zone."
  }
}

variable "snapshot_retention_days" {
  description = "Days of daily snapshots kept."
  type        = number
  default     = 1
}

variable "kms_key_arn" {
  description = "Key for data at rest and the URL secret."
  type        = string
}

variable "secret_recovery_days" {
  description = "Days a deleted secret can still be restored."
  type        = number
  default     = 7
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
