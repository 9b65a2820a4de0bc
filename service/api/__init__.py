"""HTTP API v1: thin blueprints that parse, call a data function, and serialize."""

from __future__ import annotations

from flask_openapi3 import OpenAPI

from service.api import experiments, meta, serving
from service.api.common import PathIdConverter


def register(app: OpenAPI) -> None:
    app.url_map.converters["path_id"] = PathIdConverter
    app.register_api(meta.api)
    app.register_api(experiments.api)
    app.register_api(serving.api)
