"""Static HTML for the widgets of a saved notebook, from the widget state the notebook stores.

A notebook run in JupyterLab (or by ``nbconvert --execute``) keeps the last state of every
widget in its metadata (``application/vnd.jupyter.widget-state+json``): slider values, the PNG
bytes of an ``Image``, the HTML of a label, the text of a progress bar. A web page can show that
state without a kernel and without the ipywidgets JavaScript (which would come from a CDN):
this module turns each widget output into plain HTML, a picture of the widget as it was last
seen, with its controls drawn disabled. ``scripts/build_book.py`` uses it.

>>> state = {"a": {"model_name": "FloatSliderModel", "state": {"description": "T", "value": 0.7}}}
>>> static_widget("a", state)
'<span class="static-control"><label>T</label> <input type="range" disabled> 0.7</span>'
"""

from __future__ import annotations

import html
from typing import Any

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

_BOXES = {"HBoxModel": "row", "VBoxModel": "column", "BoxModel": "row", "GridBoxModel": "row",
          "AccordionModel": "column", "TabModel": "column", "StackModel": "column"}
_SLIDERS = {"FloatSliderModel", "IntSliderModel", "FloatLogSliderModel", "FloatRangeSliderModel",
            "IntRangeSliderModel", "SelectionSliderModel", "SelectionRangeSliderModel"}
_CHOICES = {"ToggleButtonsModel", "DropdownModel", "RadioButtonsModel", "SelectModel"}
_TEXTS = {"FloatTextModel", "IntTextModel", "BoundedFloatTextModel", "BoundedIntTextModel", "TextModel"}


def _child_id(ref: str) -> str:
    return ref[len("IPY_MODEL_"):] if isinstance(ref, str) and ref.startswith("IPY_MODEL_") else ref


def _buffer(model: dict[str, Any], key: str) -> str | None:
    """The base64 text of a binary trait (an Image's ``value``) saved beside the state."""
    for buf in model.get("buffers", []):
        if buf.get("path") == [key] and buf.get("encoding", "base64") == "base64":
            return buf["data"]
    return None


def _output_html(output: dict[str, Any]) -> str:
    """One saved output of an ``Output`` widget: a picture, HTML, or text."""
    data = output.get("data", {})
    if "image/png" in data:
        return f'<img src="data:image/png;base64,{"".join(data["image/png"]).strip()}" alt="figure">'
    if "text/html" in data:
        return "".join(data["text/html"])
    text = "".join(data.get("text/plain", output.get("text", "")))
    return f"<pre>{html.escape(text)}</pre>" if text.strip() else ""


def static_widget(model_id: str, state: dict[str, dict[str, Any]], depth: int = 0) -> str:
    """HTML showing widget ``model_id`` (and its children) as the saved ``state`` has it."""
    model = state.get(model_id)
    if model is None or depth > 50:
        return ""
    name, s = model.get("model_name", ""), model.get("state", {})
    label = html.escape(str(s.get("description", "")))
    if name in _BOXES:
        children = "".join(static_widget(_child_id(c), state, depth + 1) for c in s.get("children", []))
        return f'<div class="static-box" style="display:flex;flex-direction:{_BOXES[name]};gap:6px">' \
               f"{children}</div>"
    if name == "ImageModel":
        data = _buffer(model, "value")
        if not data:
            return ""
        width = f' width="{html.escape(str(s["width"]))}"' if s.get("width") else ""
        kind = s.get("format", "png")
        return f'<img src="data:image/{kind};base64,{data}"{width} alt="{label or "widget"}">'
    if name in ("HTMLModel", "HTMLMathModel"):
        return f'<span class="static-html">{s.get("value", "")}</span>'
    if name == "LabelModel":
        return f"<span>{html.escape(str(s.get('value', '')))}</span>"
    if name in _SLIDERS:
        value = s.get("value")
        if name.startswith("Selection"):
            labels = s.get("_options_labels", [])
            index = s.get("index", 0)
            value = labels[index] if isinstance(index, int) and index < len(labels) else index
        return f'<span class="static-control"><label>{label}</label> <input type="range" disabled> ' \
               f"{html.escape(str(value))}</span>"
    if name in ("FloatProgressModel", "IntProgressModel"):
        return f'<progress value="{s.get("value", 0)}" max="{s.get("max", 100)}"></progress>'
    if name in _CHOICES:
        labels, index = s.get("_options_labels", []), s.get("index")
        chosen = "".join(f"<b>[{html.escape(str(o))}]</b> " if i == index else f"{html.escape(str(o))} "
                         for i, o in enumerate(labels))
        return f'<span class="static-control"><label>{label}</label> {chosen.strip()}</span>'
    if name in ("CheckboxModel", "ToggleButtonModel"):
        mark = "&#9745;" if s.get("value") else "&#9744;"
        return f'<span class="static-control">{mark} {label}</span>'
    if name in _TEXTS:
        value = html.escape(str(s.get("value", "")))
        return f'<span class="static-control"><label>{label}</label> {value}</span>'
    if name == "ButtonModel":
        return f"<button disabled>{label}</button>"
    if name == "OutputModel":
        return "".join(_output_html(o) for o in s.get("outputs", []))
    return ""


def is_progress_bar(model_id: str, state: dict[str, dict[str, Any]]) -> bool:
    """Whether a widget is a progress bar (tqdm's HBox of text, bar, text): no controls to move."""
    model = state.get(model_id, {})
    refs = model.get("state", {}).get("children", [])
    children = [state.get(_child_id(c), {}).get("model_name") for c in refs]
    return model.get("model_name") == "HBoxModel" and "FloatProgressModel" in children and \
        not any(c in _SLIDERS or c in _CHOICES or c == "ImageModel" for c in children)
