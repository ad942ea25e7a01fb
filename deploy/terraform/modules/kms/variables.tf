variable "name" {
  description = "Name of the key's alias, e.g. parley-staging."
  type        = string
}

variable "deletion_window_in_days" {
  description = "Days between scheduling the key's deletion and its deletion."
  type        = number
  default     = 30
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
