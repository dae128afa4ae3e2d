"""A Runware task's acceleratorOptions as predict() inputs: DeepCache, limited to the cache
window (cacheStartStep/cacheEndStep, or their percentages of the steps) and to
cacheMaxConsecutiveSteps calls reused in a row. TeaCache and FBCache (for transformer models)
are refused by the schema."""

from typing import Any

from .runware_guides import fail, fraction


def deepcache(options: dict[str, Any], steps: int) -> dict[str, Any]:
    """deepcache_* inputs, if deepCache is on; the window as deepcache_start/deepcache_end
    (fractions of each pass's steps), the cap on calls reused in a row only when given."""
    starts, ends = _given(options, "cacheStartStep"), _given(options, "cacheEndStep")
    for name in ("cacheStartStep", "cacheEndStep"):
        if name in options and f"{name}Percentage" in options:
            raise fail(
                f"acceleratorOptions.{name}Percentage", f"give {name} or {name}Percentage, not both"
            )
    if options.get("cacheEndStep", 0) > steps:
        raise fail("acceleratorOptions.cacheEndStep", f"at most steps ({steps})")
    if not options.get("deepCache"):
        return {}
    interval = options.get("deepCacheInterval", 3)
    if "cacheMaxConsecutiveSteps" in options:  # calls reused in a row: interval - 1
        interval = min(interval, options["cacheMaxConsecutiveSteps"] + 1)
    inputs = {
        "deepcache_interval": interval,
        "deepcache_branch": options.get("deepCacheBranchId", 0),
    }
    start = fraction(options, "cacheStartStep", steps, default=0.0)
    end = fraction(options, "cacheEndStep", steps, default=1.0)
    if start >= end:  # a start was given: the end is at least 1 step or 1 %
        if ends:
            raise fail(f"acceleratorOptions.{ends}", f"must be above {starts} ({options[starts]})")
        raise fail(
            f"acceleratorOptions.{starts}",
            f"must be below the cache's end (step {steps} of {steps})",
        )
    if (start, end) != (0.0, 1.0):
        inputs |= {"deepcache_start": start, "deepcache_end": end}
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
