variable "region" {
  description = "AWS region of the state bucket and the image registry."
  type        = string
  default     = "eu-west-1"
}

variable "state_bucket" {
  description = "Globally unique name of the Terraform state bucket, e.g. parley-tfstate-<account id>."
  type        = string
}

variable "github_repository" {
  description = "owner/name of the GitHub repository whose workflows may push images and deploy."
  type        = string
}

variable "environments" {
  description = "Environments with a deploy role (and a GitHub environment of the same name)."
  type        = list(string)
  default     = ["staging", "prod"]
}

variable "releases_kept" {
  description = "Release images kept in ECR for rollbacks."
  type        = number
  default     = 50
}
