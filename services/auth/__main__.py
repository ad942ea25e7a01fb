"""`python -m services.auth`: run the auth service."""

from services.auth.app import create_app
from services.auth.config import check_auth_config
from services.common.app import run_service

if __name__ == "__main__":
    run_service("auth", create_app, check=check_auth_config)
