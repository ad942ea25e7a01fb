output "arn" {
  description = "The load balancer."
  value       = aws_lb.this.arn
}

output "arn_suffix" {
  description = "The load balancer's ARN suffix (CloudWatch dimension)."
  value       = aws_lb.this.arn_suffix
}

output "dns_name" {
  description = "The load balancer's own DNS name."
  value       = aws_lb.this.dns_name
}

output "security_group_id" {
  description = "The load balancer's security group (source of traffic to the tasks)."
  value       = aws_security_group.alb.id
}

output "target_group_arns" {
  description = "Target group ARN by component."
  value       = { for k, tg in aws_lb_target_group.this : k => tg.arn }
}

output "target_group_arn_suffixes" {
  description = "Target group ARN suffix by component (the ALBRequestCountPerTarget resource label)."
  value       = { for k, tg in aws_lb_target_group.this : k => tg.arn_suffix }
}

output "api_url" {
  description = "The public base URL of the API."
  value       = "https://${var.domain_name}"
}
