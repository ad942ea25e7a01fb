# The web client (/) and the admin console (/admin/) as static files: a
# private S3 bucket read only by one CloudFront distribution through origin
# access control, HTTPS with an ACM certificate (us-east-1, as CloudFront
# requires), security headers, access logs.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  origin_id  = "web-bucket"
}

# --- the bucket's key: CloudFront may decrypt, through its distributions only ---

data "aws_iam_policy_document" "key" {
  #checkov:skip=CKV_AWS_109:A key policy's "*" resource means this key only; the root principal delegates to IAM policies.
  #checkov:skip=CKV_AWS_111:A key policy's "*" resource means this key only.
  #checkov:skip=CKV_AWS_356:A key policy's "*" resource means this key only.
  statement {
    sid       = "AccountAdministersThroughIAM"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudFrontReadsTheSite"
    actions   = ["kms:Decrypt"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["cloudfront.amazonaws.com"]
    }
    condition {
      test     = "StringLike"
      variable = "AWS:SourceArn"
      values   = ["arn:${local.partition}:cloudfront::${local.account_id}:distribution/*"]
    }
  }
}

resource "aws_kms_key" "site" {
  description         = "Parley ${var.name}: web client and admin console files"
  enable_key_rotation = true
  policy              = data.aws_iam_policy_document.key.json
  tags                = var.tags
}

# --- buckets ------------------------------------------------------------------------

module "logs" {
  source = "../s3_bucket"

  name                 = "${var.name}-cdn-logs"
  kms_key_arn          = null # CloudFront standard logs support SSE-S3 only
  object_ownership     = "BucketOwnerPreferred"
  receives_access_logs = true
  expiration_days      = var.access_log_days
  force_destroy        = var.force_destroy
  tags                 = var.tags
}

data "aws_iam_policy_document" "site" {
  statement {
    sid       = "CloudFrontReadsObjects"
    actions   = ["s3:GetObject"]
    resources = ["arn:${local.partition}:s3:::${var.name}-web/*"]
    principals {
      type        = "Service"
      identifiers = ["cloudfront.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "AWS:SourceArn"
      values   = [aws_cloudfront_distribution.this.arn]
    }
  }
}

module "site" {
  source = "../s3_bucket"

  name              = "${var.name}-web"
  kms_key_arn       = aws_kms_key.site.arn
  access_log_bucket = module.logs.id
  policy_documents  = [data.aws_iam_policy_document.site.json]
  force_destroy     = var.force_destroy
  tags              = var.tags
}

# --- certificate (us-east-1) ------------------------------------------------------

resource "aws_acm_certificate" "site" {
  provider          = aws.us_east_1
  domain_name       = var.domain_name
  validation_method = "DNS"
  tags              = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_route53_record" "validation" {
  for_each = {
    for o in aws_acm_certificate.site.domain_validation_options : o.domain_name => o
  }
  zone_id         = var.route53_zone_id
  name            = each.value.resource_record_name
  type            = each.value.resource_record_type
  records         = [each.value.resource_record_value]
  ttl             = 300
  allow_overwrite = true
}

resource "aws_acm_certificate_validation" "site" {
  provider                = aws.us_east_1
  certificate_arn         = aws_acm_certificate.site.arn
  validation_record_fqdns = [for r in aws_route53_record.validation : r.fqdn]
}

# --- distribution -----------------------------------------------------------------

resource "aws_cloudfront_origin_access_control" "this" {
  name                              = "${var.name}-web"
  description                       = "CloudFront signs its S3 requests"
  origin_access_control_origin_type = "s3"
  signing_behavior                  = "always"
  signing_protocol                  = "sigv4"
}

# Single-page apps: a path without a file extension serves its app's index.
resource "aws_cloudfront_function" "index" {
  name    = "${var.name}-spa-index"
  runtime = "cloudfront-js-2.0"
  comment = "Serve /index.html or /admin/index.html for app routes"
  publish = true
  code    = <<-JS
    function handler(event) {
      var request = event.request;
      var uri = request.uri;
      var last = uri.substring(uri.lastIndexOf('/') + 1);
      if (last.indexOf('.') === -1) {
        request.uri = (uri === '/admin' || uri.indexOf('/admin/') === 0) ? '/admin/index.html' : '/index.html';
      }
      return request;
    }
  JS
}

resource "aws_cloudfront_response_headers_policy" "this" {
  name = "${var.name}-security-headers"

  security_headers_config {
    strict_transport_security {
      access_control_max_age_sec = 63072000
      include_subdomains         = true
      preload                    = true
      override                   = true
    }
    content_type_options {
      override = true
    }
    frame_options {
      frame_option = "DENY"
      override     = true
    }
    referrer_policy {
      referrer_policy = "no-referrer"
      override        = true
    }
    content_security_policy {
      content_security_policy = "default-src 'self'; connect-src 'self' https://${var.api_domain_name} wss://${var.api_domain_name}; img-src 'self' data:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self' https://${var.api_domain_name}; worker-src 'none'"
      override                = true
    }
  }
}

data "aws_cloudfront_cache_policy" "optimized" {
  name = "Managed-CachingOptimized"
}

resource "aws_cloudfront_distribution" "this" {
  #checkov:skip=CKV2_AWS_47:No web ACL on the static site (see CKV_AWS_68), so no Log4j rule group either; nothing there runs Java or takes input.
  #checkov:skip=CKV_AWS_68:Static public files only; the API's WAF sits on the ALB. Add a CloudFront web ACL if the site ever takes input.
  #checkov:skip=CKV_AWS_310:One origin (the bucket); S3 is regional and multi-AZ, a second origin would be a second copy to keep in sync.
  #checkov:skip=CKV_AWS_374:Parley serves every country; a deployment that must restrict some adds a geo_restriction whitelist here.
  enabled             = true
  is_ipv6_enabled     = true
  comment             = "Parley web client and admin console (${var.name})"
  default_root_object = "index.html"
  aliases             = [var.domain_name]
  price_class         = var.price_class
  tags                = var.tags

  origin {
    domain_name              = module.site.regional_domain_name
    origin_id                = local.origin_id
    origin_access_control_id = aws_cloudfront_origin_access_control.this.id
  }

  default_cache_behavior {
    target_origin_id           = local.origin_id
    viewer_protocol_policy     = "redirect-to-https"
    allowed_methods            = ["GET", "HEAD", "OPTIONS"]
    cached_methods             = ["GET", "HEAD"]
    compress                   = true
    cache_policy_id            = data.aws_cloudfront_cache_policy.optimized.id
    response_headers_policy_id = aws_cloudfront_response_headers_policy.this.id

    function_association {
      event_type   = "viewer-request"
      function_arn = aws_cloudfront_function.index.arn
    }
  }

  logging_config {
    bucket          = "${module.logs.id}.s3.amazonaws.com"
    prefix          = "cloudfront/"
    include_cookies = false
  }

  restrictions {
    geo_restriction {
      restriction_type = "none"
    }
  }

  viewer_certificate {
    acm_certificate_arn      = aws_acm_certificate_validation.site.certificate_arn
    ssl_support_method       = "sni-only"
    minimum_protocol_version = "TLSv1.2_2021"
  }
}

resource "aws_route53_record" "site" {
  for_each = toset(["A", "AAAA"])
  zone_id  = var.route53_zone_id
  name     = var.domain_name
  type     = each.key

  alias {
    name                   = aws_cloudfront_distribution.this.domain_name
    zone_id                = aws_cloudfront_distribution.this.hosted_zone_id
    evaluate_target_health = false
  }
}
