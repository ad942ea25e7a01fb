"""The static web server: the admin console (and later the chat client) behind HAProxy."""
