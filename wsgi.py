"""The app for `flask run` (found here by Flask's discovery) and for WSGI servers (`wsgi:app`)."""

from webui import create_app

app = create_app()
