output "state_bucket" {
  description = "Bucket for the environments' backend configuration."
  value       = module.state.id
}

output "ecr_repository_url" {
  description = "Where CD pushes the image (the environments' ecr_repository_url)."
  value       = aws_ecr_repository.parley.repository_url
}

output "ecr_repository_arn" {
  description = "The environments' ecr_repository_arn."
  value       = aws_ecr_repository.parley.arn
}

output "push_role_arn" {
  description = "GitHub variable AWS_PUSH_ROLE_ARN."
  value       = aws_iam_role.push.arn
}

output "deploy_role_arns" {
  description = "GitHub environment variable AWS_DEPLOY_ROLE_ARN, by environment."
  value       = { for env, role in aws_iam_role.deploy : env => role.arn }
}
