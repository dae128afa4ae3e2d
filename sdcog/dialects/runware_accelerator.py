"""A Runware task's acceleratorOptions as predict() inputs: DeepCache, limited to the cache
window (cacheStartStep/cacheEndStep, or their percentages of the steps) and to
cacheMaxConsecutiveSteps calls reused in a row. Runware's Python SDK writes cacheEndStep as
cacheStopStep. TeaCache and FBCache (for transformer models) are refused by the schema."""

from typing import Any

from .runware_guides import fail, fraction

# Fields that say the same thing: a task gives one of each pair.
ALTERNATIVES = [
    ("cacheStartStep", "cacheStartStepPercentage"), ("cacheEndStep", "cacheEndStepPercentage"),
    ("cacheEndStep", "cacheStopStep"), ("cacheEndStepPercentage", "cacheStopStep"),
]  # fmt: skip


def deepcache(options: dict[str, Any], steps: int) -> dict[str, Any]:
    """deepcache_* inputs, if deepCache is on; the window as deepcache_start/deepcache_end
    (fractions of each pass's steps), the cap on calls reused in a row only when given."""
    end = "cacheStopStep" if "cacheStopStep" in options else "cacheEndStep"  # as spelled
    for first, second in ALTERNATIVES:
        if first in options and second in options:
            raise fail(f"acceleratorOptions.{second}", f"give {first} or {second}, not both")
    if options.get(end, 0) > steps:
        raise fail(f"acceleratorOptions.{end}", f"at most steps ({steps})")
    if not options.get("deepCache"):
        return {}
    interval = options.get("deepCacheInterval", 3)
    if "cacheMaxConsecutiveSteps" in options:  # calls reused in a row: interval - 1
        interval = min(interval, options["cacheMaxConsecutiveSteps"] + 1)
    inputs = {
        "deepcache_interval": interval,
        "deepcache_branch": options.get("deepCacheBranchId", 0),
    }
    start_value = fraction(options, "cacheStartStep", steps, default=0.0)
    end_value = fraction(options, end, steps, default=1.0)
    if start_value >= end_value:  # a start was given: the end is at least 1 step or 1 %
        starts = _given(options, "cacheStartStep")
        if ends := _given(options, end):
            raise fail(f"acceleratorOptions.{ends}", f"must be above {starts} ({options[starts]})")
        raise fail(
            f"acceleratorOptions.{starts}",
            f"must be below the cache's end (step {steps} of {steps})",
        )
    if (start_value, end_value) != (0.0, 1.0):
        inputs |= {"deepcache_start": start_value, "deepcache_end": end_value}
    return inputs


def ignored(options: dict[str, Any]) -> list[tuple[str, str]]:
    """Without DeepCache, the other options have no cache to tune: (field, why) for each."""
    if options.get("deepCache"):
        return []
    return [(f"acceleratorOptions.{name}", "no cache is on: deepCache is not true")
            for name in options if name != "deepCache"]  # fmt: skip


def _given(options: dict[str, Any], name: str) -> str | None:
    """Which of `name` and `<name>Percentage` the options give, if either."""
    return next((field for field in (name, f"{name}Percentage") if field in options), None)
