"""`python -m services.keys`: run the keys service."""

from services.common.app import run_service
from services.keys.app import create_app

if __name__ == "__main__":
    run_service("keys", create_app)
