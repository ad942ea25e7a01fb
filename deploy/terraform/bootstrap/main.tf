# Made once per AWS account, before any environment (docs/deployment.md,
# "First deploy"): the S3 bucket that holds every root's Terraform state (with
# S3-native locking), the ECR repository of the one Parley image (shared by
# the environments: staging and prod run the same image), and the roles that
# GitHub Actions assumes through OIDC — no long-lived AWS keys anywhere.
#
# This root's own state starts local; backend.tf.example moves it into the
# bucket afterwards.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account_id  = data.aws_caller_identity.current.account_id
  partition   = data.aws_partition.current.partition
  github_host = "token.actions.githubusercontent.com"
}

module "kms" {
  source = "../modules/kms"
  name   = "parley-shared"
}

# --- Terraform state ------------------------------------------------------------

module "state" {
  source = "../modules/s3_bucket"

  name                    = var.state_bucket
  kms_key_arn             = module.kms.key_arn
  access_log_bucket       = module.state_logs.id
  noncurrent_version_days = 365
}

module "state_logs" {
  source = "../modules/s3_bucket"

  name                 = "${var.state_bucket}-logs"
  kms_key_arn          = null # S3 server access logs are delivered with SSE-S3 only
  receives_access_logs = true
  expiration_days      = 365
}

# --- the image registry ----------------------------------------------------------

resource "aws_ecr_repository" "parley" {
  name                 = "parley"
  image_tag_mutability = "IMMUTABLE" # a version or commit tag always names the same image

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = module.kms.key_arn
  }
}

resource "aws_ecr_lifecycle_policy" "parley" {
  repository = aws_ecr_repository.parley.name
  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Keep release images (tags v*) for rollbacks"
        selection = {
          tagStatus     = "tagged"
          tagPrefixList = ["v"]
          countType     = "imageCountMoreThan"
          countNumber   = var.releases_kept
        }
        action = { type = "expire" }
      },
      {
        rulePriority = 2
        description  = "Expire untagged layers after two weeks"
        selection = {
          tagStatus   = "untagged"
          countType   = "sinceImagePushed"
          countUnit   = "days"
          countNumber = 14
        }
        action = { type = "expire" }
      },
    ]
  })
}

# --- GitHub Actions through OIDC -----------------------------------------------------

resource "aws_iam_openid_connect_provider" "github" {
  url             = "https://${local.github_host}"
  client_id_list  = ["sts.amazonaws.com"]
  thumbprint_list = ["6938fd4d98bab03faadb97b34396831e3780aea1", "1c58a3a8518e8759bf075b76b750d4f2df264fcd"]
}

# Pushing images: only workflows on main of this repository.
data "aws_iam_policy_document" "push_trust" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.github.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.github_host}:aud"
      values   = ["sts.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.github_host}:sub"
      values   = ["repo:${var.github_repository}:ref:refs/heads/main"]
    }
  }
}

resource "aws_iam_role" "push" {
  name               = "parley-ci-push"
  assume_role_policy = data.aws_iam_policy_document.push_trust.json
}

data "aws_iam_policy_document" "push" {
  statement {
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # not restrictable to a resource
  }
  statement {
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:CompleteLayerUpload",
      "ecr:DescribeImages",
      "ecr:InitiateLayerUpload",
      "ecr:PutImage",
      "ecr:UploadLayerPart",
    ]
    resources = [aws_ecr_repository.parley.arn]
  }
  statement {
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"]
    resources = [module.kms.key_arn]
  }
}

resource "aws_iam_role_policy" "push" {
  name   = "push-parley-image"
  role   = aws_iam_role.push.id
  policy = data.aws_iam_policy_document.push.json
}

# Deploying: only jobs bound to the GitHub environment of the same name (prod's
# has required reviewers). Broad AWS rights (Terraform creates most kinds of
# resources), but IAM only on this environment's own roles.
data "aws_iam_policy_document" "deploy_trust" {
  for_each = toset(var.environments)

  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.github.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.github_host}:aud"
      values   = ["sts.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.github_host}:sub"
      values   = ["repo:${var.github_repository}:environment:${each.key}"]
    }
  }
}

resource "aws_iam_role" "deploy" {
  for_each             = toset(var.environments)
  name                 = "parley-deploy-${each.key}"
  assume_role_policy   = data.aws_iam_policy_document.deploy_trust[each.key].json
  max_session_duration = 7200
}

resource "aws_iam_role_policy_attachment" "deploy_power_user" {
  for_each   = toset(var.environments)
  role       = aws_iam_role.deploy[each.key].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/PowerUserAccess"
}

data "aws_iam_policy_document" "deploy_iam" {
  for_each = toset(var.environments)

  statement {
    sid = "OwnRoles"
    actions = [
      "iam:CreateRole",
      "iam:DeleteRole",
      "iam:GetRole",
      "iam:TagRole",
      "iam:ListRoleTags",
      "iam:UntagRole",
      "iam:UpdateAssumeRolePolicy",
      "iam:PutRolePolicy",
      "iam:GetRolePolicy",
      "iam:DeleteRolePolicy",
      "iam:ListRolePolicies",
      "iam:ListAttachedRolePolicies",
      "iam:ListInstanceProfilesForRole",
      "iam:PassRole",
    ]
    resources = ["arn:${local.partition}:iam::${local.account_id}:role/parley-${each.key}-*"]
  }

  statement {
    sid       = "ServiceLinkedRoles"
    actions   = ["iam:CreateServiceLinkedRole"]
    resources = ["arn:${local.partition}:iam::${local.account_id}:role/aws-service-role/*"]
  }
}

resource "aws_iam_role_policy" "deploy_iam" {
  for_each = toset(var.environments)
  name     = "manage-parley-${each.key}-roles"
  role     = aws_iam_role.deploy[each.key].id
  policy   = data.aws_iam_policy_document.deploy_iam[each.key].json
}
