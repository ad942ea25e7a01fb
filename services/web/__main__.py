"""`python -m services.web`: serve the web apps."""

from services.common.app import run_service
from services.web.app import create_app

if __name__ == "__main__":
    run_service("web", create_app)
