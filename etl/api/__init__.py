"""The REST service: vendor exports and feed, virtual badges, bearer tokens.

Import ``etl.api.app.create_app`` for the FastAPI application; ``etl.api.tokens`` and ``etl.api.cli``
do not import FastAPI, so the token commands start quickly.
"""
