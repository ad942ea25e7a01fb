variable "name" {
  description = "Globally unique bucket name."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key for SSE-KMS; null for SSE-S3 (required for buckets that ALB or CloudFront write logs to)."
  type        = string
  default     = null
}

variable "access_log_bucket" {
  description = "Bucket that receives this bucket's access logs; null for none (the log bucket itself)."
  type        = string
  default     = null
}

variable "receives_access_logs" {
  description = "Let S3 server access logging of this account's buckets write here (under s3/)."
  type        = bool
  default     = false
}

variable "policy_documents" {
  description = "Extra bucket-policy documents (JSON) merged with the TLS-only statement."
  type        = list(string)
  default     = []
}

variable "object_ownership" {
  description = "BucketOwnerEnforced, or BucketOwnerPreferred for buckets that CloudFront writes logs to (it needs ACLs)."
  type        = string
  default     = "BucketOwnerEnforced"
}

variable "expiration_days" {
  description = "Delete current objects after this many days (log buckets); null keeps them."
  type        = number
  default     = null
}

variable "noncurrent_version_days" {
  description = "Delete overwritten or deleted object versions after this many days."
  type        = number
  default     = 90
}

variable "force_destroy" {
  description = "Let terraform destroy delete a non-empty bucket (staging only)."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
