"""Base class of every configuration model: task specs, plugin configs, the CRD spec."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

__all__ = ["SpecModel"]


class SpecModel(BaseModel):
    """Strict (unknown fields are errors), and accepts both ``snake_case`` and ``camelCase``.

    Task files and the JSON-RPC/Kafka planes use snake_case (the reference plan's task JSON);
    the CaptureTask custom resource uses camelCase, as Kubernetes APIs do. Error locations
    always use the snake_case names.
    """

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        loc_by_alias=False,
        serialize_by_alias=False,
    )
