variable "name" {
  description = "Name prefix, e.g. parley-staging."
  type        = string
}

variable "vpc_id" {
  description = "The VPC."
  type        = string
}

variable "public_subnet_ids" {
  description = "Public subnets, one per availability zone."
  type        = list(string)
}

variable "domain_name" {
  description = "The API's host name (clients' base URL), e.g. api.parley.example."
  type        = string
}

variable "route53_zone_id" {
  description = "Route 53 hosted zone of domain_name: certificate validation and the alias record."
  type        = string
}

variable "routes" {
  description = "Target groups by component: port, readiness path, path patterns (empty: reached only as the default), rule priority, deregistration delay and algorithm."
  type = map(object({
    port                 = number
    health_path          = string
    paths                = list(string)
    priority             = number
    deregistration_delay = number
    algorithm            = string
  }))
}

variable "default_route" {
  description = "The component that answers paths no rule matches (HAProxy's default_backend)."
  type        = string
}

variable "idle_timeout" {
  description = "Seconds a connection may stay idle. WebSockets send heartbeats (PARLEY_WS_HEARTBEAT_S, 30 s), so this only has to be longer than that; HAProxy's tunnel timeout is 1 h."
  type        = number
  default     = 600
}

variable "ssl_policy" {
  description = "TLS policy of the HTTPS listener (TLS 1.2 and 1.3 only)."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"
}

variable "deletion_protection" {
  description = "Refuse to delete the load balancer."
  type        = bool
  default     = true
}

variable "access_log_days" {
  description = "Days to keep ALB access logs."
  type        = number
  default     = 90
}

variable "log_retention_days" {
  description = "Days to keep WAF logs."
  type        = number
  default     = 30
}

variable "waf_rate_limit_per_5min" {
  description = "Requests per client address per 5 minutes above which the WAF blocks it."
  type        = number
  default     = 3000
}

variable "cors_origin" {
  description = "The web apps' origin (CloudFront), named in the CORS header of the WAF's rate-limit answer; empty: none."
  type        = string
  default     = ""
}

variable "kms_key_arn" {
  description = "Key that encrypts the WAF log group."
  type        = string
}

variable "force_destroy" {
  description = "Let terraform destroy delete the non-empty log bucket (staging only)."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
