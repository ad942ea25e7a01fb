"""`python -m services.rooms`: run the rooms service."""

from services.common.app import run_service
from services.rooms.app import create_app

if __name__ == "__main__":
    run_service("rooms", create_app)
