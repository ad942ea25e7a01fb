output "service_name" {
  description = "ECS service name."
  value       = aws_ecs_service.this.name
}

output "task_definition_family" {
  description = "Task definition family."
  value       = aws_ecs_task_definition.this.family
}

output "log_group" {
  description = "The component's log group."
  value       = aws_cloudwatch_log_group.app.name
}

output "task_role_arn" {
  description = "The component's task role."
  value       = aws_iam_role.task.arn
}

output "execution_role_arn" {
  description = "The component's execution role."
  value       = aws_iam_role.execution.arn
}
