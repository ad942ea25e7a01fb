#!/usr/bin/env bash
# Runs a one-off ECS task to completion and fails unless its container exits 0.
#   run_task.sh CLUSTER TASK_DEFINITION CONTAINER SUBNETS(csv) SECURITY_GROUP
# Called by terraform (kafka-init) and usable by hand; needs the AWS CLI.
set -euo pipefail
cluster=$1 taskdef=$2 container=$3 subnets=$4 sg=$5
arn=$(aws ecs run-task --cluster "$cluster" --task-definition "$taskdef" --launch-type FARGATE \
  --network-configuration "awsvpcConfiguration={subnets=[$subnets],securityGroups=[$sg],assignPublicIp=DISABLED}" \
  --query 'tasks[0].taskArn' --output text)
echo "run_task: $taskdef started as $arn"
aws ecs wait tasks-stopped --cluster "$cluster" --tasks "$arn"
code=$(aws ecs describe-tasks --cluster "$cluster" --tasks "$arn" \
  --query "tasks[0].containers[?name=='$container'].exitCode | [0]" --output text)
echo "run_task: $container exited with $code"
[ "$code" = "0" ]
