variable "name" {
  description = "Name prefix, e.g. parley-staging (bucket names derive from it)."
  type        = string
}

variable "domain_name" {
  description = "Host name of the web client, e.g. app.parley.example."
  type        = string
}

variable "api_domain_name" {
  description = "Host name of the API, allowed in the Content-Security-Policy's connect-src."
  type        = string
}

variable "route53_zone_id" {
  description = "Route 53 hosted zone of domain_name."
  type        = string
}

variable "price_class" {
  description = "CloudFront price class."
  type        = string
  default     = "PriceClass_100"
}

variable "access_log_days" {
  description = "Days to keep CloudFront access logs."
  type        = number
  default     = 90
}

variable "force_destroy" {
  description = "Let terraform destroy delete non-empty buckets (staging only)."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
