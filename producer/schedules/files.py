"""Schedule files (YAML): read and checked as a whole before anything is applied.

    schedules:
      - name: nightly-catalogue
        cron: "0 2 * * *"
        timezone: Europe/Berlin
        source: s3://lcm-inputs/catalogue.jsonl      # or a path, relative to this file
        template: "{prompt}, catalogue of {date}"
        defaults: {steps: 4, width: 512, height: 512}
        missed: catch_up
        catch_up_max: 3

A bare list of schedules is accepted too. Every problem is reported, each naming the
schedule and the field; one problem anywhere and nothing is applied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lcm_fleet.schedules import InvalidSchedule, Schedule, schedule_problems

#: Problems listed in one error; the count of the rest follows.
MAX_PROBLEMS_SHOWN = 50


def _load_yaml(path: Path) -> Any:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidSchedule(f"cannot read the schedule file {path}: {e}") from e
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise InvalidSchedule(f"{path} is not valid YAML{where}: {problem}") from e


def _resolved(payload: Any, base: Path) -> Any:
    """A relative local ``source`` read from ``base`` (the file's folder), made absolute."""
    if not isinstance(payload, dict):
        return payload
    source = payload.get("source")
    if isinstance(source, str) and source and not source.startswith("s3://"):
        path = Path(source).expanduser()
        if not path.is_absolute():
            return {**payload, "source": str((base / path).resolve())}
    return payload


def read_schedule_file(path: Path, owner: str) -> list[Schedule]:
    """Every schedule of the file, owned by ``owner``; InvalidSchedule listing every problem
    (each naming the schedule and the field) if any has one."""
    path = Path(path)
    data = _load_yaml(path)
    items = data.get("schedules") if isinstance(data, dict) else data
    if isinstance(data, dict) and set(data) - {"schedules"}:
        extra = ", ".join(repr(k) for k in sorted(map(str, set(data) - {"schedules"})))
        raise InvalidSchedule(f"{path}: top-level key(s) {extra} are not known; use 'schedules:'")
    if not isinstance(items, list) or not items:
        raise InvalidSchedule(
            f"{path}: expected a list of schedules under 'schedules:' (or a bare list), got "
            f"{type(items).__name__ if items is not None else 'nothing'}"
        )
    problems: list[str] = []
    seen: dict[str, int] = {}
    payloads = []
    for number, item in enumerate(items, start=1):
        payload = _resolved(item, path.parent)
        if isinstance(payload, dict):
            if "owner" in payload:
                problems.append(
                    f"schedule {payload.get('name', f'#{number}')!r}: field 'owner' is set by "
                    "whoever applies the file (the API key, or local); remove it"
                )
                continue
            payload = {**payload, "owner": owner}
        problems += schedule_problems(payload, where=f"#{number}")
        name = payload.get("name") if isinstance(payload, dict) else None
        if isinstance(name, str):
            if name in seen:
                problems.append(
                    f"schedule {name!r}: defined twice (entries {seen[name]} and {number}); "
                    "names must be unique"
                )
            seen.setdefault(name, number)
        payloads.append(payload)
    if problems:
        shown = "\n  ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = len(problems) - MAX_PROBLEMS_SHOWN
        raise InvalidSchedule(
            f"{path}: {len(problems)} problem(s); nothing was applied:\n  {shown}"
            + (f"\n  ... and {more} more" if more > 0 else "")
        )
    return [Schedule.model_validate(p) for p in payloads]
