"""The OpenAPI document that `cog build` writes to .cog/openapi_schema.json.

Cog's server validates requests against that file and serves it at /openapi.json; without Docker
nothing writes it, so this builds the same document from Cog's own Python inspector.
"""

import json
from typing import Any

from cog import _inspector
from cog._adt import PredictorInfo, Repetition

_OK = {"description": "Successful Response", "content": {"application/json": {"schema": {}}}}
_INVALID = {
    "description": "Validation Error",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
    },
}
_TIME = {"type": "string", "format": "date-time"}


def _input_schema(info: PredictorInfo) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Input object, plus one enum schema per input with choices (Cog's layout)."""
    properties: dict[str, Any] = {}
    enums: dict[str, Any] = {}
    required = []
    for name, field in info.inputs.items():
        prop: dict[str, Any] = {"x-order": field.order}
        if field.choices is not None:
            prop["allOf"] = [{"$ref": f"#/components/schemas/{name}"}]
            enums[name] = {
                "title": name,
                "description": "An enumeration.",
                "enum": field.choices,
                **field.type.primitive.json_type(),
            }
        else:
            prop["title"] = name.replace("_", " ").title()
            prop.update(field.type.json_type())
        default = field.default.default if hasattr(field.default, "default") else field.default
        if default is None:
            if field.type.repetition in (Repetition.REQUIRED, Repetition.REPEATED):
                required.append(name)
        else:
            prop["default"] = field.type.json_encode(field.type.normalize(default))
        if field.type.repetition is Repetition.OPTIONAL:
            prop["nullable"] = True
        constraints = {
            "description": field.description,
            "minimum": field.ge,
            "maximum": field.le,
            "minLength": field.min_length,
            "maxLength": field.max_length,
            "pattern": field.regex,
            "deprecated": field.deprecated,
        }
        prop.update({k: v for k, v in constraints.items() if v is not None})
        properties[name] = prop
    schema = {"title": "Input", "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema, enums


def build_schema(module: str = "predict", predictor: str = "Predictor") -> dict[str, Any]:
    info = _inspector.create_predictor(module, predictor)
    input_schema, enums = _input_schema(info)
    prediction_id = {
        "required": True,
        "schema": {"title": "Prediction Id", "type": "string"},
        "name": "prediction_id",
        "in": "path",
    }
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/PredictionRequest"}}}
    response = {"application/json": {"schema": {"$ref": "#/components/schemas/PredictionResponse"}}}
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": {
            "/": {
                "get": {"summary": "Root", "operationId": "root__get", "responses": {"200": _OK}}
            },
            "/health-check": {
                "get": {
                    "summary": "Healthcheck",
                    "operationId": "healthcheck_health_check_get",
                    "responses": {"200": _OK},
                }
            },
            "/predictions": {
                "post": {
                    "summary": "Predict",
                    "description": "Run a single prediction on the model",
                    "operationId": "predict_predictions_post",
                    "requestBody": {"content": ref},
                    "responses": {
                        "200": {"description": "Successful Response", "content": response},
                        "422": _INVALID,
                    },
                }
            },
            "/predictions/{prediction_id}/cancel": {
                "post": {
                    "summary": "Cancel",
                    "operationId": "cancel_predictions__prediction_id__cancel_post",
                    "parameters": [prediction_id],
                    "responses": {"200": _OK, "422": _INVALID},
                }
            },
        },
        "components": {
            "schemas": {
                "HTTPValidationError": {
                    "title": "HTTPValidationError",
                    "type": "object",
                    "properties": {
                        "detail": {
                            "title": "Detail",
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/ValidationError"},
                        }
                    },
                },
                "PredictionRequest": {
                    "title": "PredictionRequest",
                    "type": "object",
                    "properties": {
                        "id": {"title": "Id", "type": "string"},
                        "input": {"$ref": "#/components/schemas/Input"},
                    },
                },
                "PredictionResponse": {
                    "title": "PredictionResponse",
                    "type": "object",
                    "properties": {
                        "input": {"$ref": "#/components/schemas/Input"},
                        "output": {"$ref": "#/components/schemas/Output"},
                        "id": {"title": "Id", "type": "string"},
                        "version": {"title": "Version", "type": "string"},
                        "created_at": {"title": "Created At", **_TIME},
                        "started_at": {"title": "Started At", **_TIME},
                        "completed_at": {"title": "Completed At", **_TIME},
                        "status": {"title": "Status", "type": "string"},
                        "error": {"title": "Error", "type": "string"},
                        "logs": {"title": "Logs", "type": "string"},
                        "metrics": {"title": "Metrics", "type": "object"},
                    },
                },
                "Status": {
                    "title": "Status",
                    "description": "An enumeration.",
                    "enum": ["starting", "processing", "succeeded", "canceled", "failed"],
                    "type": "string",
                },
                "ValidationError": {
                    "title": "ValidationError",
                    "required": ["loc", "msg", "type"],
                    "type": "object",
                    "properties": {
                        "loc": {
                            "title": "Location",
                            "type": "array",
                            "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                        },
                        "msg": {"title": "Message", "type": "string"},
                        "type": {"title": "Error Type", "type": "string"},
                    },
                },
                "Input": input_schema,
                "Output": info.output.json_type(),
                **enums,
            }
        },
    }


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2) + "\n"
