variable "name" {
  description = "Cluster name, e.g. parley-staging."
  type        = string
}

variable "vpc_id" {
  description = "The VPC."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets, one per availability zone (the broker count is a multiple of their number)."
  type        = list(string)
}

variable "kafka_version" {
  description = "Apache Kafka version on MSK."
  type        = string
  default     = "3.6.0"
}

variable "broker_count" {
  description = "Number of brokers (a multiple of the number of subnets)."
  type        = number
  default     = 2
}

variable "instance_type" {
  description = "Broker instance type."
  type        = string
  default     = "kafka.t3.small"
}

variable "volume_size_gb" {
  description = "EBS storage per broker, in GB."
  type        = number
  default     = 100
}

variable "partitions" {
  description = "Default partitions of a topic (also PARLEY_KAFKA_PARTITIONS): the most delivery workers that consume in parallel."
  type        = number
  default     = 12
}

variable "plaintext_bridge" {
  description = "TEMPORARY: also open the unauthenticated plaintext listener (9092) inside the VPC, for services that cannot speak SASL_SSL yet (docs/deployment.md). Keep false."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "Key for data at rest, broker logs and the SCRAM secret."
  type        = string
}

variable "log_retention_days" {
  description = "Days to keep broker logs."
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
