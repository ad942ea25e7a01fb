# State in S3 with S3-native locking (a lock file beside the state; no
# DynamoDB table). The bucket and region come at init time:
#   terraform init -backend-config="bucket=$TF_STATE_BUCKET" -backend-config="region=$AWS_REGION"
terraform {
  backend "s3" {
    key          = "staging/terraform.tfstate"
    encrypt      = true
    use_lockfile = true
  }
}
