"""Build a pipeline from a task spec: registry lookups, nothing clever."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from otus.core.errors import PluginError, PluginNotFoundError
from otus.decoder import Decoder
from otus.pipeline.pipeline import Pipeline
from otus.pipeline.spec import TaskSpec
from otus.plugins.base import PluginContext
from otus.plugins.capture import CAPTURERS
from otus.plugins.parser import PARSERS
from otus.plugins.processor import PROCESSORS
from otus.plugins.reporter import REPORTERS

__all__ = ["build_pipeline"]


def _make(registry: dict[str, Any], kind: str, name: str, config: Any, ctx: PluginContext) -> Any:
    cls = registry.get(name)
    if cls is None:
        known = ", ".join(sorted(registry))
        raise PluginNotFoundError(f"no {kind} named {name!r} (known: {known})")
    try:
        return cls(config, ctx)
    except PluginError:
        raise
    except (OSError, ValueError) as e:
        raise PluginError(f"{kind} {name!r}: {e}") from None


def build_pipeline(
    spec: TaskSpec,
    ctx: PluginContext | None = None,
    *,
    on_stats: Callable[[Pipeline], Awaitable[None] | None] | None = None,
) -> Pipeline:
    """Instantiate every plugin of the task for one worker; raise PluginError if one can't start."""
    ctx = ctx or PluginContext(task_id=spec.id)
    capturer = _make(CAPTURERS, "capturer", spec.capture.type, spec.capture, ctx)
    parsers = [_make(PARSERS, "parser", p.type, p.config, ctx) for p in spec.parsers]
    processors = [_make(PROCESSORS, "processor", p.type, p.config, ctx) for p in spec.processors]
    reporters = [_make(REPORTERS, "reporter", r.type, r.config, ctx) for r in spec.reporters]
    return Pipeline(
        ctx,
        capturer,
        Decoder(spec.decoder.to_options()),
        parsers,
        processors,
        reporters,
        max_packets=spec.limits.max_packets,
        duration_s=spec.limits.duration_s,
        on_stats=on_stats,
    )
