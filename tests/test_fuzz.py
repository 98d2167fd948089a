"""Property-based fuzzing of flowlib's public doors (issue 12, item 11).

Every door is called with values drawn by hypothesis -- good ones, edge ones (empty batches,
NumPy integers, huge and tiny numbers) and bad ones (NaN, inf, wrong dtypes and types,
mutated files) -- and must either return a finite result of the documented shape or raise one
of flowlib's own errors (:class:`~flowlib.FlowInputError`, :class:`~flowlib.train.TrainingError`,
:class:`~flowlib.data.images.DatasetError`) whose message names the call. Anything else (a raw
``RuntimeError`` from inside torch, a ``KeyError``, a silent NaN) fails the test.

The doors: vector and image models' ``log_prob`` and ``sample``; ``fit``'s arguments with
budgets of one or two steps; ``load_pretrained`` on a temporary copy of a shipped file with
mutated bytes or builder keywords; and every control of every widget at both ends of its range.

Bounded for CI: each property runs a fixed number of examples (``derandomize=True``: the same
examples on every run, so a failure reproduces) with a per-example deadline; the file takes
well under a minute on a shared 2-core CPU.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from flowlib import FlowInputError  # noqa: E402
from flowlib.data.images import DatasetError  # noqa: E402
from flowlib.train import TrainingError  # noqa: E402

FLOWLIB_ERRORS = (FlowInputError, TrainingError, DatasetError)
FOLDER = Path(__file__).resolve().parents[1] / "flowlib" / "checkpoints"

#: A fixed number of examples and a deadline per example; the same examples every run.
FUZZ = settings(max_examples=60, deadline=3000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _call(who: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; a flowlib error must name ``who``, any other exception fails.

    Returns ``(result, None)`` or ``(None, error)``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # warnings are allowed answers; errors are checked below
            return fn(*args, **kwargs), None
    except FLOWLIB_ERRORS as err:
        assert str(err), f"{who}: {type(err).__name__} without a message"
        return None, err
    except Exception as err:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{who} raised {type(err).__name__} (not a flowlib error): {err}")


# -- models ---------------------------------------------------------------------------------
def _vector_models() -> dict:
    from flowlib import models

    torch.manual_seed(0)
    built = {
        "nice_vector": models.nice_vector(3, couplings=2, hidden=4, layers=1),
        "realnvp_vector": models.realnvp_vector(3, couplings=2, hidden=4, layers=1),
        "glow_vector": models.glow_vector(3, couplings=2, hidden=4, layers=1),
        "planar_flow": models.planar_flow(3, layers=2),
        "radial_flow": models.radial_flow(3, layers=2),
    }
    with torch.no_grad():
        for model in built.values():  # ActNorm's data-dependent start on a varied batch, once
            model.log_prob(torch.randn(64, 3))
    return built


def _image_models() -> dict:
    from flowlib import image_models

    torch.manual_seed(0)
    kw = {"hidden": 4, "blocks": 1, "grey_levels": 17}
    built = {
        "nice_image": image_models.nice_image((1, 4, 4), couplings=2, **kw),
        "realnvp_image": image_models.realnvp_image((1, 4, 4), scales=1, depth=2, **kw),
        "glow_image": image_models.glow_image((1, 4, 4), scales=1, depth=1, **kw),
    }
    g = torch.Generator().manual_seed(1)
    for model in built.values():  # ActNorm's data-dependent start on a varied batch, once
        model.initialize(torch.randint(0, 17, (16, 1, 4, 4), generator=g))
        model.eval()
    return built


VECTOR = _vector_models()
IMAGE = _image_models()

finite_values = st.floats(-20.0, 20.0, allow_nan=False, width=32)
bad_values = st.sampled_from([math.nan, math.inf, -math.inf])


@st.composite
def vector_batches(draw):
    n = draw(st.integers(0, 4))
    values = draw(st.lists(finite_values, min_size=3 * n, max_size=3 * n))
    x = torch.tensor(values, dtype=torch.float32).reshape(n, 3)
    if n and draw(st.booleans()):
        x.view(-1)[draw(st.integers(0, 3 * n - 1))] = draw(bad_values)
    return x.double() if draw(st.booleans()) else x


@FUZZ
@given(name=st.sampled_from(sorted(VECTOR)), x=vector_batches())
def test_vector_log_prob(name, x):
    model = VECTOR[name]
    out, err = _call(f"{name}.log_prob", model.log_prob, x)
    if err is None:
        assert out.shape == (x.shape[0],) and bool(torch.isfinite(out).all()), (name, x, out)
    else:
        assert not torch.isfinite(x).all() or x.dtype != torch.float32 or x.shape[0] == 0, (name, x, err)


sample_sizes = st.one_of(st.integers(-2, 5), st.integers(0, 5).map(np.int64),
                         st.sampled_from([2.5, "3", None, True]))
temperatures = st.one_of(st.floats(0.0, 3.0),
                         st.sampled_from([-1.0, math.nan, math.inf, 1e39, 3.5e38, 1e-30]))


@FUZZ
@given(name=st.sampled_from(sorted(VECTOR) + sorted(IMAGE)), n=sample_sizes, temperature=temperatures)
def test_sample(name, n, temperature):
    model = {**VECTOR, **IMAGE}[name]
    with torch.no_grad():
        out, err = _call(f"{name}.sample", model.sample, n, temperature=temperature)
    if err is None:
        assert out.shape[0] == int(n) and bool(torch.isfinite(out).all()), (name, n, temperature)


@st.composite
def image_batches(draw):
    n = draw(st.integers(0, 3))
    levels = draw(st.lists(st.integers(0, 16), min_size=16 * n, max_size=16 * n))
    x = torch.tensor(levels, dtype=torch.int64).reshape(n, 1, 4, 4)
    kind = draw(st.sampled_from(["levels", "float levels", "out of range", "nan"]))
    if kind == "float levels":
        x = x.float()
    elif n and kind == "out of range":
        x.view(-1)[0] = draw(st.sampled_from([-1, 17, 255]))
    elif n and kind == "nan":
        x = x.float()
        x.view(-1)[0] = math.nan
    return x


@FUZZ
@given(name=st.sampled_from(sorted(IMAGE)), x=image_batches())
def test_image_log_prob(name, x):
    model = IMAGE[name]
    with torch.no_grad():
        out, err = _call(f"{name}.log_prob", model.log_prob, x)
    good = x.shape[0] == 0 or (bool(torch.isfinite(x.float()).all()) and 0 <= float(x.min())
                               and float(x.max()) <= 16)
    if err is None:
        assert out.shape == (x.shape[0],) and bool(torch.isfinite(out).all()), (name, out)
    else:
        assert not good, f"{name}.log_prob refused good levels: {err}"


# -- fit ------------------------------------------------------------------------------------
FIT_OPTIONS = {
    "lr": st.sampled_from([1e-3, 0.0, -1.0, True, "x", math.nan, math.inf]),
    "batch_size": st.sampled_from([8, 1, 0, -1, 2.5, 10**9]),
    "eval_batch_size": st.sampled_from([None, 4, 0, -1]),
    "warmup_steps": st.sampled_from([None, 0, 1, -5, "x"]),
    "weight_decay": st.sampled_from([0.0, 1e-4, -1.0, math.nan]),
    "early_stopping_patience": st.sampled_from([None, 1, 0, -2]),
    "device": st.sampled_from(["cpu", "cuda", "tpu", 3] if not torch.cuda.is_available() else ["cpu", "tpu"]),
    "seed": st.sampled_from([0, 1, -1, "s"]),
}


@FUZZ
@given(options=st.fixed_dictionaries({"steps": st.sampled_from([1, 2, 1, 2, 0, -1, 1.5, "2", True])},
                                     optional=FIT_OPTIONS),
       data=st.sampled_from(["tensor", "list", "nan", "float64", "empty"]),
       with_val=st.booleans())
def test_fit_arguments(options, data, with_val):
    from flowlib import models
    from flowlib.train import fit

    torch.manual_seed(0)
    model = models.nice_vector(2, couplings=2, hidden=4, layers=1)
    x = torch.randn(32, 2)
    train = {"tensor": x, "list": x.tolist(), "float64": x.double(), "empty": x[:0]}.get(data)
    if data == "nan":
        train = x.clone()
        train[3, 1] = math.nan
    val = torch.randn(16, 2) if with_val else None
    result, err = _call("fit", fit, model, train, val_data=val, progress=False, **options)
    if err is None:
        assert result.steps == int(options["steps"]), result
        assert all(map(math.isfinite, result.history.losses)), result
        assert result.best_val is None or math.isfinite(result.best_val), result
        assert all(torch.isfinite(p).all() for p in model.parameters())
    else:
        assert "fit" in str(err), err


# -- loaders --------------------------------------------------------------------------------
NICE_BYTES = (FOLDER / "nice_mnist.pt").read_bytes()


@FUZZ
@given(mutation=st.sampled_from(["flip", "truncate", "kwarg"]), at=st.floats(0.0, 1.0),
       key=st.sampled_from(["hidden", "blocks", "couplings", "grey_levels", "shape", "colour"]),
       value=st.sampled_from([0, -1, 3, 10**7, 2**40, "16", 1.5, None, True, [1, 28], [64, 4096, 4096]]))
def test_load_pretrained_on_mutated_copies(tmp_path_factory, mutation, at, key, value):
    from flowlib._integrity import with_checksum
    from flowlib.pretrained import checkpoint_info, load_pretrained

    path = tmp_path_factory.mktemp("fuzz") / "copy.pt"
    raw = NICE_BYTES
    if mutation == "flip":
        i = min(int(at * len(raw)), len(raw) - 1)
        raw = raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:]
    elif mutation == "truncate":
        raw = raw[:int(at * len(raw))]
    else:
        blob = torch.load(io.BytesIO(raw), weights_only=True)
        blob["kwargs"][key] = value
        buffer = io.BytesIO()
        torch.save(with_checksum(blob), buffer)
        raw = buffer.getvalue()
    path.write_bytes(raw)
    for who, fn in (("checkpoint_info", checkpoint_info), ("load_pretrained", load_pretrained)):
        out, err = _call(who, fn, path)
        if err is not None:
            assert "load_pretrained" in str(err) and "copy.pt" in str(err), err
    if err is None:  # the mutation missed everything that matters: the weights are the shipped ones
        shipped = load_pretrained("nice_mnist").state_dict()
        assert all(torch.equal(v, shipped[k]) for k, v in out.state_dict().items())


# -- widgets: every control at both ends ----------------------------------------------------
def _widgets() -> dict:
    from flowlib.widgets import (
        AttributeSlider,
        ChangeOfVariables1D,
        DequantizationBound,
        LatentInterpolation,
        MasksAndSqueeze,
        PlanarFlow2D,
        ShearAndScale2D,
        SplineKnots,
        TemperatureGrid,
    )

    glow = IMAGE["glow_image"]
    g = torch.Generator().manual_seed(2)
    x_a, x_b = torch.randint(0, 17, (2, 1, 4, 4), generator=g)
    return {
        "ChangeOfVariables1D": lambda: ChangeOfVariables1D(grid_points=2001, n_samples=100),
        "PlanarFlow2D": lambda: PlanarFlow2D(resolution=40, n_samples=50, max_layers=2),
        "PlanarFlow2D radial": lambda: PlanarFlow2D(kind="radial", resolution=40, n_samples=50, max_layers=2),
        "TemperatureGrid": lambda: TemperatureGrid(glow, n=4),
        "LatentInterpolation": lambda: LatentInterpolation(glow, x_a, x_b, frames=3),
        "ShearAndScale2D": lambda: ShearAndScale2D(),
        "ShearAndScale2D disc, scaling": lambda: ShearAndScale2D(shape="disc", scaling=True),
        "MasksAndSqueeze": lambda: MasksAndSqueeze(size=4),
        "DequantizationBound": lambda: DequantizationBound(),
        "SplineKnots": lambda: SplineKnots(),
        "AttributeSlider": lambda: AttributeSlider(glow, torch.stack([x_a, x_b]),
                                                   {"d": torch.ones(1, 4, 4), "-d": -torch.ones(1, 4, 4)}),
    }


WIDGETS = _widgets()
_BUILT: dict = {}


def _ends(control) -> list:
    """The values of a control at both ends: min and max of a slider, every option of a menu."""
    if hasattr(control, "min") and hasattr(control, "max"):
        return [control.min, control.max]
    if hasattr(control, "options"):
        options = list(control.options)
        return [o[1] if isinstance(o, tuple) else o for o in options]
    if isinstance(getattr(control, "value", None), bool):
        return [False, True]
    return []


@settings(max_examples=30, deadline=5000, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(WIDGETS)), pick=st.integers(0, 10**6), end=st.integers(0, 10**6))
def test_every_widget_control_at_both_ends(name, pick, end):
    if name not in _BUILT:
        _BUILT[name], err = _call(name, WIDGETS[name])
        assert err is None, err
    widget = _BUILT[name]
    controls = [(k, c) for k, c in widget.controls.items() if _ends(c)]
    key, control = controls[pick % len(controls)]
    values = _ends(control)
    value = values[end % len(values)]
    _, err = _call(f"{name}.controls[{key!r}] = {value!r}", setattr, control, "value", value)
    assert err is None, f"{name}: setting {key} to {value!r} raised {err}"
    integral = getattr(widget, "integral", None)
    if integral is not None:  # the figure the widget prints: a number, never NaN
        assert math.isfinite(integral), f"{name}.integral after {key}={value!r}: {integral}"


def _every_end() -> list[tuple[str, str, int]]:
    cases = []
    for name in sorted(WIDGETS):
        if name not in _BUILT:
            _BUILT[name] = WIDGETS[name]()
        for key, control in _BUILT[name].controls.items():
            cases += [(name, key, i) for i in range(len(_ends(control)))]
    return cases


@pytest.mark.parametrize("name,key,i", _every_end())
def test_each_control_of_each_widget_at_each_end(name, key, i):
    """Exhaustive: every control of every widget, alone at each of its ends (from the defaults)."""
    widget = WIDGETS[name]()
    control = widget.controls[key]
    value = _ends(control)[i]
    _, err = _call(f"{name}.controls[{key!r}] = {value!r}", setattr, control, "value", value)
    assert err is None, f"{name}: setting {key} to {value!r} raised {err}"
    integral = getattr(widget, "integral", None)
    if integral is not None:
        assert math.isfinite(integral), f"{name}.integral after {key}={value!r}: {integral}"
