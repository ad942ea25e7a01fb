output "bucket" {
  description = "Bucket to upload the web client (/) and the admin console (/admin/) to."
  value       = module.site.id
}

output "distribution_id" {
  description = "CloudFront distribution (invalidate after an upload)."
  value       = aws_cloudfront_distribution.this.id
}

output "url" {
  description = "The web client's URL."
  value       = "https://${var.domain_name}"
}
