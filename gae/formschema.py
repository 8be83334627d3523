"""The parameter schema of a served deployment, shaped for the Prefect UI's run form.

Prefect renders a flow's parameter JSON schema as a form (its V2 UI: `schema-form`), and
some of pydantic's schema reads badly there (issue 17, each seen in a browser):

- `X | None` is `anyOf: [X, {type: null}]`, which the form shows as tabs "X | None"; when
  the value is null it selects the None tab and shows 'Property is type "None"' instead of
  an input. A field whose default is None loses the null branch and the default here (plain
  X, or the remaining tabs): the box starts empty, and an empty box sends nothing, so the
  model's default (None) applies. A field with another default keeps its tabs, the null
  one titled "not set".
- The flow's own `config: PipelineConfig | None` would put the whole form under such tabs;
  it becomes the model alone.
- `fixed` fields (the served preset) become read-only one-value selects: the form shows
  what the served config was built from, and cannot pretend to change it.

Prefect validates a run's values leniently (null is fine in an optional box), but a
deployment's default parameters strictly (plain JSON schema: the server refuses to create
the deployment): `drop_unset_nulls` leaves out the nulls of the boxes that lost their null
branch, which means the same to the model. Pure dict -> dict; no Prefect import.
"""

from __future__ import annotations

import copy
from typing import Any

NULL_TITLE = "not set"


def _is_null(branch: dict) -> bool:
    return branch.get("type") == "null" and len(branch) <= 2  # {"type": "null"} (+ a title)


def _nullable(prop: dict) -> dict | None:
    """The non-null branch of `anyOf: [X, {type: null}]`, else None."""
    branches = prop.get("anyOf")
    if not isinstance(branches, list) or len(branches) != 2:
        return None
    nulls = [b for b in branches if isinstance(b, dict) and _is_null(b)]
    others = [b for b in branches if not (isinstance(b, dict) and _is_null(b))]
    return others[0] if len(nulls) == 1 and len(others) == 1 else None


def _shape_property(prop: dict) -> dict:
    branches = prop.get("anyOf")
    if not isinstance(branches, list) or not any(isinstance(b, dict) and _is_null(b) for b in branches):
        return prop
    others = [b for b in branches if not (isinstance(b, dict) and _is_null(b))]
    if "default" in prop and prop["default"] is None and others:
        # an empty box means the default: no null branch, no default to prefill
        rest = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
        return {**others[0], **rest} if len(others) == 1 else {**rest, "anyOf": others}
    titled = [
        {"type": "null", "title": NULL_TITLE} if isinstance(b, dict) and _is_null(b) else b for b in branches
    ]
    return {**prop, "anyOf": titled}


def _walk_properties(schema: dict):
    """Every `properties` mapping of the schema: top level and each definition."""
    if isinstance(schema.get("properties"), dict):
        yield schema["properties"]
    for defs_key in ("definitions", "$defs"):
        for model in (schema.get(defs_key) or {}).values():
            if isinstance(model, dict) and isinstance(model.get("properties"), dict):
                yield model["properties"]


def for_run_form(schema: dict, *, parameter: str = "config", fixed: dict[str, Any] | None = None) -> dict:
    """`schema` (Prefect's parameter schema of a flow whose one parameter `parameter` is a
    pydantic model or None) shaped for the run form; `fixed` maps fields of that model to the
    one value the form shows for them, read-only."""
    out = copy.deepcopy(schema)
    top = out.get("properties", {}).get(parameter)
    if isinstance(top, dict):
        inner = _nullable(top)
        if inner is not None:  # the model alone: no "PipelineConfig | None" tabs around the form
            out["properties"][parameter] = {
                **inner,
                **{k: v for k, v in top.items() if k not in ("anyOf", "default")},
            }
    for props in _walk_properties(out):
        for name in list(props):
            props[name] = _shape_property(props[name])
    ref = out.get("properties", {}).get(parameter, {}).get("$ref", "")
    model = _resolve(out, ref)
    for name, value in (fixed or {}).items():
        if model is None or name not in model.get("properties", {}):
            raise ValueError(f"fixed field {name!r} is not a field of {ref or parameter!r}")
        prop = model["properties"][name]
        model["properties"][name] = {**prop, "enum": [value], "default": value, "readOnly": True}
    return out


def _resolve(schema: dict, ref: str) -> dict | None:
    for prefix, key in (("#/definitions/", "definitions"), ("#/$defs/", "$defs")):
        if ref.startswith(prefix):
            return (schema.get(key) or {}).get(ref[len(prefix) :])
    return None


def drop_unset_nulls(values: Any, schema: dict, ref: str) -> Any:
    """`values` (a dump of the model `ref` names in the *unshaped* `schema`) without the None
    values of fields whose default is None, in nested models and lists of models too."""
    model = _resolve(schema, ref)
    if not isinstance(values, dict) or model is None:
        return values
    out = {}
    for name, v in values.items():
        prop = (model.get("properties") or {}).get(name, {})
        if v is None and prop.get("default", ...) is None:
            continue
        sub = prop.get("$ref") or (_nullable(prop) or {}).get("$ref")
        items = prop.get("items") if isinstance(prop.get("items"), dict) else {}
        if sub:
            v = drop_unset_nulls(v, schema, sub)
        elif isinstance(v, list) and "$ref" in items:
            v = [drop_unset_nulls(x, schema, items["$ref"]) for x in v]
        out[name] = v
    return out
