"""The WSGI entry point for gunicorn: ``gunicorn 'api.wsgi:app'``."""

from api import create_app
from shared.config import Settings
from shared.logging_setup import configure_logging

settings = Settings()
configure_logging(settings.log_format, settings.log_level, process_name="api")
app = create_app(settings)
