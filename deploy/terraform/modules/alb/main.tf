# The public entry point: an internet-facing ALB over the public subnets with
# HTTPS only (HTTP redirects), path routing like deploy/haproxy/haproxy.cfg
# (prefixes, no rewriting, a default target), WebSocket-friendly idle timeout,
# no stickiness (gateways are stateless), access logs and a WAF.

data "aws_elb_service_account" "current" {}

locals {
  # ALB names are at most 32 characters; target group names too.
  lb_name = substr(var.name, 0, 32)

  # The CORS header of the WAF's own answers: the web apps (on CloudFront's
  # domain) then read a 403 or 404 instead of failing with a network error.
  waf_cors_headers = var.cors_origin == "" ? {} : { "Access-Control-Allow-Origin" = var.cors_origin }

  # AWSManagedRulesCommonRuleSet's rules on the request body only count (WAF
  # metrics and logs show them), never block. The body is JSON: chat text that
  # people type, which legitimately holds `<script>` (a message about HTML),
  # `../` (a pasted path) or a URL with an IP address; the APIs take JSON only
  # and the clients render text as text, never as HTML. The same rules on the
  # URI path, query string, headers and cookies still block (below). Prekey
  # uploads are also larger than SizeRestrictions_BODY's 8 KB; the services cap
  # bodies themselves (PARLEY_MAX_BODY_BYTES).
  common_body_rules = [
    "SizeRestrictions_BODY",
    "CrossSiteScripting_BODY",
    "GenericLFI_BODY",
    "GenericRFI_BODY",
    "EC2MetaDataSSRF_BODY",
  ]

  # The managed rules that block, by web ACL rule: overridden to a block with a
  # custom response, 403 `forbidden` in the services' error shape with the CORS
  # header (a managed rule's own block has neither, and a browser on the web
  # domain can only report it as a network error). WAF ignores an override that
  # names no rule of its group; a rule AWS adds to a group later blocks with its
  # bare 403 until it is listed here. (AWSManagedIPDDoSList only counts: not listed.)
  managed_blocking_rules = {
    "aws-common" = [
      "NoUserAgent_HEADER",
      "UserAgent_BadBots_HEADER",
      "SizeRestrictions_QUERYSTRING",
      "SizeRestrictions_Cookie_HEADER",
      "SizeRestrictions_URIPATH",
      "EC2MetaDataSSRF_COOKIE",
      "EC2MetaDataSSRF_URIPATH",
      "EC2MetaDataSSRF_QUERYARGUMENTS",
      "GenericLFI_QUERYARGUMENTS",
      "GenericLFI_URIPATH",
      "RestrictedExtensions_URIPATH",
      "RestrictedExtensions_QUERYARGUMENTS",
      "GenericRFI_QUERYARGUMENTS",
      "GenericRFI_URIPATH",
      "CrossSiteScripting_COOKIE",
      "CrossSiteScripting_QUERYARGUMENTS",
      "CrossSiteScripting_URIPATH",
    ]
    "aws-known-bad-inputs" = [
      "JavaDeserializationRCE_HEADER",
      "JavaDeserializationRCE_BODY",
      "JavaDeserializationRCE_URIPATH",
      "JavaDeserializationRCE_QUERYSTRING",
      "Host_localhost_HEADER",
      "PROPFIND_METHOD",
      "ExploitablePaths_URIPATH",
      "Log4JRCE_HEADER",
      "Log4JRCE_QUERYSTRING",
      "Log4JRCE_BODY",
      "Log4JRCE_URIPATH",
    ]
    "aws-ip-reputation" = [
      "AWSManagedIPReputationList",
      "AWSManagedReconnaissanceList",
    ]
  }
}

# --- certificate ----------------------------------------------------------------

resource "aws_acm_certificate" "api" {
  domain_name       = var.domain_name
  validation_method = "DNS"
  tags              = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_route53_record" "validation" {
  for_each = {
    for o in aws_acm_certificate.api.domain_validation_options : o.domain_name => o
  }
  zone_id         = var.route53_zone_id
  name            = each.value.resource_record_name
  type            = each.value.resource_record_type
  records         = [each.value.resource_record_value]
  ttl             = 300
  allow_overwrite = true
}

resource "aws_acm_certificate_validation" "api" {
  certificate_arn         = aws_acm_certificate.api.arn
  validation_record_fqdns = [for r in aws_route53_record.validation : r.fqdn]
}

# --- access logs ------------------------------------------------------------------

data "aws_iam_policy_document" "logs" {
  statement {
    sid       = "ElbLogDeliveryLegacyRegions"
    actions   = ["s3:PutObject"]
    resources = ["arn:aws:s3:::${var.name}-alb-logs/alb/*"]
    principals {
      type        = "AWS"
      identifiers = [data.aws_elb_service_account.current.arn]
    }
  }

  statement {
    sid       = "ElbLogDelivery"
    actions   = ["s3:PutObject"]
    resources = ["arn:aws:s3:::${var.name}-alb-logs/alb/*"]
    principals {
      type        = "Service"
      identifiers = ["logdelivery.elasticloadbalancing.amazonaws.com"]
    }
  }
}

module "logs" {
  source = "../s3_bucket"

  name             = "${var.name}-alb-logs"
  kms_key_arn      = null # ALB access logs support SSE-S3 only
  policy_documents = [data.aws_iam_policy_document.logs.json]
  expiration_days  = var.access_log_days
  force_destroy    = var.force_destroy
  tags             = var.tags
}

# --- load balancer ------------------------------------------------------------------

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "Public HTTPS (and HTTP that redirects) into the ALB"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "https" {
  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from anywhere"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "http" {
  #checkov:skip=CKV_AWS_260:Port 80 only answers with a redirect to HTTPS (the listener below); nothing is served over HTTP.
  security_group_id = aws_security_group.alb.id
  description       = "HTTP from anywhere, redirected to HTTPS"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_lb" "this" {
  #checkov:skip=CKV_AWS_150:Deletion protection follows var.deletion_protection: on in prod, off in the disposable staging environment.
  #checkov:skip=CKV2_AWS_76:The Log4j rules (AWSManagedRulesKnownBadInputsRuleSet) are in the web ACL; the check also demands AWSManagedRulesAnonymousIpList, which would lock out Tor and VPN users of a privacy-focused messenger.
  name                       = local.lb_name
  load_balancer_type         = "application"
  internal                   = false
  subnets                    = var.public_subnet_ids
  security_groups            = [aws_security_group.alb.id]
  idle_timeout               = var.idle_timeout
  drop_invalid_header_fields = true
  enable_deletion_protection = var.deletion_protection
  tags                       = var.tags

  access_logs {
    bucket  = module.logs.id
    prefix  = "alb"
    enabled = true
  }

  # The bucket policy must let ELB write before access logs can be enabled.
  depends_on = [module.logs]
}

resource "aws_lb_listener" "http" {
  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type = "redirect"
    redirect {
      port        = "443"
      protocol    = "HTTPS"
      status_code = "HTTP_301"
    }
  }
}

# One target group per routed component (targets are Fargate task IPs).
resource "aws_lb_target_group" "this" {
  for_each = var.routes

  name                          = substr("${var.name}-${each.key}", 0, 32)
  port                          = each.value.port
  protocol                      = "HTTP"
  target_type                   = "ip"
  vpc_id                        = var.vpc_id
  deregistration_delay          = each.value.deregistration_delay
  load_balancing_algorithm_type = each.value.algorithm
  tags                          = var.tags

  # /<svc>/startedz: fails until a task's start-up work is done once, never after.
  # /readyz fails on every task at once when a dependency they share is down, and ECS
  # replaces the tasks a target group calls unhealthy (every socket cut); /healthz
  # passed a task whose start-up never ends (a release that cannot serve, shipped).
  health_check {
    path                = each.value.health_path
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  # Gateways are stateless: any pod can take any socket.
  stickiness {
    type    = "lb_cookie"
    enabled = false
  }
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = var.ssl_policy
  certificate_arn   = aws_acm_certificate_validation.api.certificate_arn

  # HAProxy's default_backend.
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this[var.default_route].arn
  }
}

# HAProxy's `path` / `path_beg` ACLs as path-pattern rules, no rewriting.
resource "aws_lb_listener_rule" "this" {
  for_each = { for k, r in var.routes : k => r if length(r.paths) > 0 }

  listener_arn = aws_lb_listener.https.arn
  priority     = each.value.priority

  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this[each.key].arn
  }

  condition {
    path_pattern {
      values = each.value.paths
    }
  }
}

# Operators' paths are internal (HAProxy's stats port locally): Prometheus
# scrapes the tasks directly and operators ask /readyz of the tasks, so the
# public listener answers 404 before any forwarding rule.
resource "aws_lb_listener_rule" "internal_only" {
  listener_arn = aws_lb_listener.https.arn
  priority     = 1

  action {
    type = "fixed-response"

    fixed_response {
      content_type = "application/json"
      message_body = jsonencode({ error = { code = "not_found", message = "No such resource." } })
      status_code  = "404"
    }
  }

  condition {
    path_pattern {
      values = ["/*/metrics", "/*/metrics/", "/*/readyz", "/*/readyz/"]
    }
  }
}

resource "aws_route53_record" "api" {
  zone_id = var.route53_zone_id
  name    = var.domain_name
  type    = "A"

  alias {
    name                   = aws_lb.this.dns_name
    zone_id                = aws_lb.this.zone_id
    evaluate_target_health = true
  }
}

# --- WAF ----------------------------------------------------------------------------

resource "aws_wafv2_web_acl" "this" {
  name  = "${var.name}-alb"
  scope = "REGIONAL"
  tags  = var.tags

  default_action {
    allow {}
  }

  # What the per-address rule answers: the services' own error shape and status
  # for a rate limit, so that a client (the web apps on another origin too, with
  # the CORS header below) says "too many requests", not "cannot reach the server".
  custom_response_body {
    key          = "rate-limited"
    content_type = "APPLICATION_JSON"
    content = jsonencode({
      error = {
        code    = "rate_limited"
        message = "Too many requests from this address; try again in a few minutes."
        details = { retry_after = 300 }
      }
    })
  }

  # What the managed rules answer when they block (local.managed_blocking_rules).
  custom_response_body {
    key          = "forbidden"
    content_type = "APPLICATION_JSON"
    content = jsonencode({
      error = { code = "forbidden", message = "The firewall refused this request." }
    })
  }

  # What the internal-paths rule answers: the ALB's and HAProxy's 404.
  custom_response_body {
    key          = "not-found"
    content_type = "APPLICATION_JSON"
    content      = jsonencode({ error = { code = "not_found", message = "No such resource." } })
  }

  # Operators' paths, refused as HAProxy's public frontend refuses them: on the
  # path after percent-decoding. The ALB's internal_only listener rule compares
  # the path as sent, so `/auth/%6detrics` passes it, and aiohttp decodes it to
  # /auth/metrics (the services refuse an encoded one too: as_sent in
  # services/common/app.py). Any path ending in /metrics or /readyz (a trailing
  # slash or several) right under a service's prefix, as HAProxy's rule (deeper
  # paths are the API's; usernames `metrics` and `readyz` are reserved besides,
  # since the ALB's `/*/metrics` pattern matches at any depth); before every other rule.
  rule {
    name     = "internal-paths"
    priority = 5
    action {
      block {
        custom_response {
          response_code            = 404
          custom_response_body_key = "not-found"
          dynamic "response_header" {
            for_each = local.waf_cors_headers
            content {
              name  = response_header.key
              value = response_header.value
            }
          }
        }
      }
    }
    statement {
      regex_match_statement {
        regex_string = "^/+[^/]+/+(metrics|readyz)/*$"
        field_to_match {
          uri_path {}
        }
        text_transformation {
          priority = 0
          type     = "URL_DECODE"
        }
        text_transformation {
          priority = 1
          type     = "LOWERCASE"
        }
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "internal-paths"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "aws-common"
    priority = 10
    override_action {
      none {}
    }
    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesCommonRuleSet"
        # Body rules count (local.common_body_rules says why); the others
        # block with the services' 403 and the CORS header.
        dynamic "rule_action_override" {
          for_each = local.common_body_rules
          content {
            name = rule_action_override.value
            action_to_use {
              count {}
            }
          }
        }
        dynamic "rule_action_override" {
          for_each = local.managed_blocking_rules["aws-common"]
          content {
            name = rule_action_override.value
            action_to_use {
              block {
                custom_response {
                  response_code            = 403
                  custom_response_body_key = "forbidden"
                  dynamic "response_header" {
                    for_each = local.waf_cors_headers
                    content {
                      name  = response_header.key
                      value = response_header.value
                    }
                  }
                }
              }
            }
          }
        }
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "aws-common"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "aws-known-bad-inputs"
    priority = 20
    override_action {
      none {}
    }
    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesKnownBadInputsRuleSet"
        dynamic "rule_action_override" {
          for_each = local.managed_blocking_rules["aws-known-bad-inputs"]
          content {
            name = rule_action_override.value
            action_to_use {
              block {
                custom_response {
                  response_code            = 403
                  custom_response_body_key = "forbidden"
                  dynamic "response_header" {
                    for_each = local.waf_cors_headers
                    content {
                      name  = response_header.key
                      value = response_header.value
                    }
                  }
                }
              }
            }
          }
        }
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "aws-known-bad-inputs"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "aws-ip-reputation"
    priority = 30
    override_action {
      none {}
    }
    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesAmazonIpReputationList"
        dynamic "rule_action_override" {
          for_each = local.managed_blocking_rules["aws-ip-reputation"]
          content {
            name = rule_action_override.value
            action_to_use {
              block {
                custom_response {
                  response_code            = 403
                  custom_response_body_key = "forbidden"
                  dynamic "response_header" {
                    for_each = local.waf_cors_headers
                    content {
                      name  = response_header.key
                      value = response_header.value
                    }
                  }
                }
              }
            }
          }
        }
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "aws-ip-reputation"
      sampled_requests_enabled   = true
    }
  }

  # A coarse flood guard per client address; the services' own limits are finer.
  # CORS preflights (OPTIONS) are counted by the next rule, not this one: a blocked
  # preflight can only fail as a network error in a browser, whatever it answers.
  rule {
    name     = "rate-per-ip"
    priority = 40
    action {
      block {
        custom_response {
          response_code            = 429
          custom_response_body_key = "rate-limited"
          response_header {
            name  = "Retry-After"
            value = "300"
          }
          dynamic "response_header" {
            for_each = {
              for name, value in {
                "Access-Control-Allow-Origin"   = var.cors_origin
                "Access-Control-Expose-Headers" = "Retry-After"
              } : name => value if var.cors_origin != ""
            }
            content {
              name  = response_header.key
              value = response_header.value
            }
          }
        }
      }
    }
    statement {
      rate_based_statement {
        limit                 = var.waf_rate_limit_per_5min
        evaluation_window_sec = 300
        aggregate_key_type    = "IP"
        scope_down_statement {
          not_statement {
            statement {
              byte_match_statement {
                search_string         = "OPTIONS"
                positional_constraint = "EXACTLY"
                field_to_match {
                  method {}
                }
                text_transformation {
                  priority = 0
                  type     = "NONE"
                }
              }
            }
          }
        }
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "rate-per-ip"
      sampled_requests_enabled   = true
    }
  }

  # Preflights, per address, at the same limit: a browser sends one per distinct
  # URL at most every two hours (Access-Control-Max-Age), a flood of them is no user.
  rule {
    name     = "preflights-per-ip"
    priority = 41
    action {
      block {}
    }
    statement {
      rate_based_statement {
        limit                 = var.waf_rate_limit_per_5min
        evaluation_window_sec = 300
        aggregate_key_type    = "IP"
        scope_down_statement {
          byte_match_statement {
            search_string         = "OPTIONS"
            positional_constraint = "EXACTLY"
            field_to_match {
              method {}
            }
            text_transformation {
              priority = 0
              type     = "NONE"
            }
          }
        }
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "preflights-per-ip"
      sampled_requests_enabled   = true
    }
  }

  visibility_config {
    cloudwatch_metrics_enabled = true
    metric_name                = "${var.name}-alb"
    sampled_requests_enabled   = true
  }
}

resource "aws_wafv2_web_acl_association" "this" {
  resource_arn = aws_lb.this.arn
  web_acl_arn  = aws_wafv2_web_acl.this.arn
}

# WAF log groups must be named aws-waf-logs-*.
resource "aws_cloudwatch_log_group" "waf" {
  #checkov:skip=CKV_AWS_338:WAF logs are kept var.log_retention_days to bound cost; raise it where an audit needs a year.
  name              = "aws-waf-logs-${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_wafv2_web_acl_logging_configuration" "this" {
  resource_arn            = aws_wafv2_web_acl.this.arn
  log_destination_configs = [aws_cloudwatch_log_group.waf.arn]

  redacted_fields {
    single_header {
      name = "authorization"
    }
  }
}
