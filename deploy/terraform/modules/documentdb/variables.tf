variable "name" {
  description = "Cluster identifier, e.g. parley-staging."
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
  description = "DocumentDB engine version."
  type        = string
  default     = "5.0.0"
}

variable "parameter_group_family" {
  description = "Cluster parameter group family matching engine_version."
  type        = string
  default     = "docdb5.0"
}

variable "instance_class" {
  description = "Instance class."
  type        = string
  default     = "db.t4g.medium"
}

variable "instance_count" {
  description = "Instances (one writer, the rest readers in other zones)."
  type        = number
  default     = 2
}

variable "backup_retention_days" {
  description = "Days of automated backups (point-in-time restore window)."
  type        = number
  default     = 7
}

variable "deletion_protection" {
  description = "Refuse to delete the cluster."
  type        = bool
  default     = true
}

variable "ca_file_path" {
  description = "Where the tasks find the RDS CA bundle (written by the certs init container)."
  type        = string
  default     = "/certs/rds-global-bundle.pem"
}

variable "kms_key_arn" {
  description = "Key for storage, log groups and the URL secret."
  type        = string
}

variable "log_retention_days" {
  description = "Days to keep audit and profiler logs."
  type        = number
  default     = 30
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
