variable "name" {
  description = "Cluster name, e.g. parley-staging."
  type        = string
}

variable "namespace" {
  description = "Private DNS namespace of the services, e.g. parley-staging.internal."
  type        = string
}

variable "vpc_id" {
  description = "The VPC."
  type        = string
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
