"""`python -m services.gateway`: run the gateway service."""

from services.common.app import run_service
from services.gateway.app import create_app

if __name__ == "__main__":
    run_service("gateway", create_app)
