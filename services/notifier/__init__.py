"""The notifier: e-mail digests of @mentions to users with no connected device."""
