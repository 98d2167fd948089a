"""The exercises: nbgrader metadata, the student versions, and what happens when a student runs one.

``scripts/make_assignments.py`` turns each lecture into a student version with nbgrader's own
preprocessors. Here we check, for every lecture ``lectures/NN_*.ipynb``:

* the nbgrader metadata of the whole course is valid (ids unique across lectures, points,
  locks, schema version) and the solution / hidden-test markers sit in the right cells;
* the student version is exactly the lecture with each solution region replaced by the stub,
  each hidden-test block removed and every output cleared: no solution text survives;
* nbgrader's own ``generate_assignment`` accepts the lectures as source notebooks, unchanged,
  and releases the same cells as the script;
* run top to bottom (``CI=true``, so training is short), a student version fails in every
  graded test cell, and in no other cell (see :func:`test_student_version_runs` for the rule);
* the lecture itself (with the solutions) passes every graded test cell.

The rule for the lectures that makes the last two checks sharp: **outside the graded test
cells, a function the student writes is used only through**
``flowlib.grading.yours_or_reference(student_fn, reference, "Exercise N")``. So a later section
runs the student's answer (a wrong one shows in its figures), and an unsolved exercise does not
break the rest of the lecture: the wrapper says so and runs flowlib's reference instead. Any
other use would make errors of an unsolved exercise impossible to tell apart from bugs.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nbformat
import pytest
from nbformat import NotebookNode

REPO = Path(__file__).resolve().parents[1]
LECTURES = sorted((REPO / "lectures").glob("[0-9][0-9]_*.ipynb"))
SCRIPT = REPO / "scripts" / "make_assignments.py"

pytest.importorskip("nbgrader", reason="nbgrader is not installed (requirements-dev.txt installs it)")

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
STUB = ["# YOUR CODE HERE", "raise NotImplementedError()"]
#: The errors an unsolved exercise may cause in its graded test cell.
EXPECTED_FAILURES = {"NotImplementedError", "AssertionError"}
#: nbgrader's own rule for a grade_id (it refuses others when it saves the cells).
GRADE_ID = re.compile(r"^[a-zA-Z0-9_\-]+$")


def nbgrader_meta(cell: NotebookNode) -> dict:
    return cell.metadata.get("nbgrader", {})


def is_solution(cell: NotebookNode) -> bool:
    return bool(nbgrader_meta(cell).get("solution"))


def is_graded(cell: NotebookNode) -> bool:
    return bool(nbgrader_meta(cell).get("grade"))


def read(path: Path) -> NotebookNode:
    return nbformat.read(path, as_version=4)


def exercise_names(nb: NotebookNode) -> set[str]:
    """The names the student writes: those bound by a top-level statement of a solution cell
    that holds (part of) a solution region, e.g. the function whose body is the solution."""
    names: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type != "code" or not is_solution(cell):
            continue
        lines = cell.source.split("\n")
        begins = [i + 1 for i, line in enumerate(lines) if BEGIN_SOLUTION in line]
        ends = [i + 1 for i, line in enumerate(lines) if END_SOLUTION in line]
        regions = list(zip(begins, ends, strict=False))
        for node in ast.parse(python_only(cell.source)).body:
            if not any(node.lineno <= end and begin <= node.end_lineno for begin, end in regions):
                continue  # unchanged in the student version
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            else:
                stored = [n for n in ast.walk(node) if isinstance(n, ast.Name) and type(n.ctx) is ast.Store]
                names |= {n.id for n in stored}
    return names


def python_only(source: str) -> str:
    """A cell's source without IPython magics and shell escapes (``%``, ``!``), so ``ast`` can read it."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def names_used(source: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(python_only(source))) if isinstance(n, ast.Name)}


#: The one door through which a plain cell may use a student's function (see the module docstring).
WRAPPER = "yours_or_reference"


def names_used_unwrapped(source: str) -> set[str]:
    """The names a cell uses, except a name that is the first argument of ``yours_or_reference(...)``."""
    tree = ast.parse(python_only(source))
    wrapped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Name):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name == WRAPPER:
                wrapped.add(id(node.args[0]))
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in wrapped}


def cut_regions(source: str, begin: str, end: str, replacement: list[str]) -> str:
    """``source`` with each ``begin`` ... ``end`` region (markers included) replaced, indented alike."""
    out, inside = [], False
    for line in source.split("\n"):
        if begin in line:
            assert not inside, f"nested {begin!r}"
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out += [indent + r for r in replacement]
        elif end in line:
            assert inside, f"{end!r} without {begin!r}"
            inside = False
        elif not inside:
            out.append(line)
    assert not inside, f"{begin!r} without {end!r}"
    return "\n".join(out)


def lecture_id(path: Path) -> str:
    return path.stem


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The student versions of all lectures, made by the one command an instructor runs."""
    out = tmp_path_factory.mktemp("student")
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], check=True, cwd=REPO,
                   capture_output=True, text=True)
    return out


def student_path(student_dir: Path, lecture: Path) -> Path:
    return student_dir / lecture.stem / lecture.name


# ----------------------------------------------------------------------------------------
# The lectures: metadata and markers
# ----------------------------------------------------------------------------------------
def test_nbgrader_metadata_is_valid_across_the_course() -> None:
    ids: Counter[str] = Counter()
    problems = []
    for path in LECTURES:
        number = path.name[:2]
        for index, cell in enumerate(read(path).cells):
            meta = nbgrader_meta(cell)
            where = f"{path.name} cell {index}"
            if not meta:
                continue
            ids[meta.get("grade_id", "")] += 1
            grade_id = meta.get("grade_id", "")
            if meta.get("schema_version") != 3:
                problems.append(f"{where}: schema_version {meta.get('schema_version')!r}, expected 3")
            if not GRADE_ID.match(grade_id) or not grade_id.startswith(f"{number}-"):
                problems.append(f"{where}: grade_id {grade_id!r} must match {GRADE_ID.pattern} "
                                f"and start with the lecture number '{number}-'")
            if meta.get("task"):
                problems.append(f"{where}: task cells are not used in this course")
            if meta.get("solution") and meta.get("grade"):
                problems.append(f"{where}: a cell is either a solution or a graded test, not both")
            if meta.get("solution") and meta.get("locked") is not False:
                problems.append(f"{where}: a solution cell must be unlocked (locked: false)")
            if meta.get("grade"):
                points = meta.get("points")
                if not isinstance(points, (int, float)) or isinstance(points, bool) or points <= 0:
                    problems.append(f"{where}: a graded cell needs points > 0, got {points!r}")
                if meta.get("locked") is not True:
                    problems.append(f"{where}: a graded test cell must be locked (locked: true)")
            if (meta.get("solution") or meta.get("grade")) and cell.cell_type != "code":
                problems.append(f"{where}: exercises in this course are code cells")
    duplicates = sorted(i for i, n in ids.items() if n > 1)
    assert not duplicates, f"grade_ids must be unique across the course, repeated: {duplicates}"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("lecture", LECTURES, ids=lecture_id)
def test_markers_sit_in_the_right_cells(lecture: Path) -> None:
    """Solution regions only in solution cells, hidden tests only in graded cells, tests after solutions."""
    nb = read(lecture)
    problems = []
    solutions_seen = 0
    for index, cell in enumerate(nb.cells):
        where = f"cell {index}"
        if "BEGIN SOLUTION" in cell.source or "END SOLUTION" in cell.source:
            if not is_solution(cell):
                problems.append(f"{where}: solution markers outside a solution cell")
        elif is_solution(cell):
            problems.append(f"{where}: a solution cell without {BEGIN_SOLUTION!r} (nbgrader would "
                            "replace the WHOLE cell, signature and docstring included)")
        if "HIDDEN TESTS" in cell.source and not is_graded(cell):
            problems.append(f"{where}: hidden tests outside a graded test cell")
        solutions_seen += is_solution(cell)
        if is_graded(cell) and solutions_seen == 0:
            problems.append(f"{where}: a graded test cell before any solution cell")
        for begin, end in ((BEGIN_SOLUTION, END_SOLUTION), (BEGIN_HIDDEN, END_HIDDEN)):
            try:
                cut_regions(cell.source, begin, end, [])
            except AssertionError as error:
                problems.append(f"{where}: {error}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("lecture", LECTURES, ids=lecture_id)
def test_no_plain_cell_uses_an_exercise_directly(lecture: Path) -> None:
    """Outside graded test cells, the student's functions only go through yours_or_reference."""
    nb = read(lecture)
    names = exercise_names(nb)
    offenders = [
        f"cell {i} uses {sorted(names_used_unwrapped(c.source) & names)}: {c.source.splitlines()[0][:70]!r}"
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and not is_solution(c) and not is_graded(c)
        and names_used_unwrapped(c.source) & names
    ]
    assert not offenders, (
        f"{lecture.name}: cells outside the graded tests call the student's functions directly, so an "
        f"unsolved exercise breaks them; wrap them: {WRAPPER}(student_fn, reference, 'Exercise N'):\n"
        + "\n".join(offenders))


def test_wrapper_recognised() -> None:
    source = ("a = yours_or_reference(mine, ref, 'Exercise 1')\n"
              "b = grading.yours_or_reference(other, ref, 'x')\nc = mine(1)")
    assert names_used_unwrapped(source) & {"mine", "other"} == {"mine"}


@pytest.mark.parametrize("lecture", LECTURES, ids=lecture_id)
def test_lecture_passes_its_own_tests(lecture: Path) -> None:
    """With the solutions in, every graded test cell passes.

    The committed lecture keeps its outputs, and nbval (in the test command) re-runs the
    lecture and requires the same outputs: so a graded cell whose saved output is its
    success line, with no error, passes on every run. No need to run the lecture twice.
    """
    nb = read(lecture)
    for index, cell in enumerate(nb.cells):
        if not is_graded(cell):
            continue
        where = f"{lecture.name} cell {index} ({nbgrader_meta(cell)['grade_id']})"
        assert cell.execution_count is not None, f"{where}: not executed; commit the lecture with its outputs"
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{where}: the reference solution fails: {errors[0].ename}: {errors[0].evalue}"
        text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        assert "passed" in text, f"{where}: should print a short stable success line such as 'ex1 passed'"


# ----------------------------------------------------------------------------------------
# The student versions
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("lecture", LECTURES, ids=lecture_id)
def test_student_version_holds_no_solution(student_dir: Path, lecture: Path) -> None:
    """Exactly the lecture, minus solutions, hidden tests and outputs."""
    source, student = read(lecture), read(student_path(student_dir, lecture))
    assert len(student.cells) == len(source.cells)
    for index, (ours, theirs) in enumerate(zip(source.cells, student.cells, strict=True)):
        where = f"{lecture.name} cell {index}"
        assert theirs.cell_type == ours.cell_type, where
        for marker in ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS"):
            assert marker not in theirs.source, f"{where}: {marker!r} left in the student version"
        expected = cut_regions(ours.source, BEGIN_SOLUTION, END_SOLUTION, STUB)
        expected = cut_regions(expected, BEGIN_HIDDEN, END_HIDDEN, [])
        assert theirs.source == expected, f"{where}: not the lecture minus its solutions"
        if ours.cell_type == "code":
            assert theirs.outputs == [] and theirs.execution_count is None, f"{where}: outputs left"
        if nbgrader_meta(ours):
            meta = nbgrader_meta(theirs)
            assert meta["grade_id"] == nbgrader_meta(ours)["grade_id"], where
            assert "checksum" in meta, f"{where}: no checksum: nbgrader's autograder could not spot edits"
            if is_graded(ours):
                assert theirs.metadata.get("editable") is False, f"{where}: a test cell the student can edit"
    assert "widgets" not in student.metadata, "saved widget state (from the solution's run) left in"
    assert "jupytext" not in student.metadata, "a student notebook should not pair itself with a .py file"


def test_nbgrader_accepts_the_lectures_unchanged(student_dir: Path, tmp_path: Path) -> None:
    """nbgrader's generate_assignment, on the lectures as source notebooks, releases the same cells.

    This is the instructor's path (``scripts/make_assignments.py --course``), gradebook included.
    """
    subprocess.run([sys.executable, str(SCRIPT), "--course", str(tmp_path)], check=True, cwd=REPO,
                   capture_output=True, text=True)
    nbgrader = shutil.which("nbgrader", path=str(Path(sys.executable).parent))
    if nbgrader is None:
        pytest.skip("the nbgrader command is not beside this python")
    # nbgrader runs `alembic` (installed beside it) to create its gradebook: put it on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run([nbgrader, "generate_assignment", "*"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, f"nbgrader generate_assignment failed:\n{run.stdout}\n{run.stderr}"
    assert (tmp_path / "gradebook.db").is_file()
    for lecture in LECTURES:
        released = read(tmp_path / "release" / lecture.stem / lecture.name)
        ours = read(student_path(student_dir, lecture))
        assert released.cells == ours.cells, f"{lecture.name}: nbgrader releases other cells than the script"


def run_notebook(path: Path) -> NotebookNode:
    """Run a notebook in its folder, going on after errors; returns it with its outputs.

    The kernel inherits this process's environment: the caller sets ``CI``. MPLBACKEND stays
    Agg (set in conftest.py): no figure is rendered, which is all this test needs.
    """
    from nbclient import NotebookClient

    nb = read(path)
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def first_error(cell: NotebookNode) -> NotebookNode | None:
    return next((o for o in cell.get("outputs", []) if o.output_type == "error"), None)


EXERCISE_LECTURES = [p for p in LECTURES if any(is_graded(c) for c in read(p).cells)]


@pytest.mark.parametrize("lecture", EXERCISE_LECTURES, ids=lecture_id)
def test_student_version_runs(student_dir: Path, lecture: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unsolved student version fails in its graded test cells and nowhere else.

    The rule, cell by cell (all cells are run, errors do not stop the run):

    * a graded test cell MUST fail, with NotImplementedError (the stub) or AssertionError (a
      check that fails before the stub is reached): a test that passes without the student's
      code tests nothing;
    * a solution cell must run cleanly: it only defines functions, the stub is in their bodies;
    * any other cell must run cleanly: one that builds on an exercise goes through
      ``yours_or_reference`` and runs flowlib's reference while the exercise is unsolved. The
      one failure that would be understandable there, NotImplementedError from a cell that calls
      an unsolved exercise's function directly, is tolerated here only to keep this report
      precise; such cells are forbidden anyway by :func:`test_no_plain_cell_uses_an_exercise_directly`.
      Any other error (a NameError because a later cell needs something only a failing test
      cell defines, say) is a bug of the lecture.
    """
    monkeypatch.setenv("CI", "true")  # the lectures shorten their training
    nb = run_notebook(student_path(student_dir, lecture))
    names = exercise_names(nb)
    problems = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        error = first_error(cell)
        where = f"cell {index}"
        if is_graded(cell):
            if error is None:
                grade_id = nbgrader_meta(cell)["grade_id"]
                problems.append(f"{where} ({grade_id}): the test passes without a solution")
            elif error.ename not in EXPECTED_FAILURES:
                problems.append(f"{where}: the test fails with {error.ename}: {error.evalue}, expected "
                                f"one of {sorted(EXPECTED_FAILURES)}")
        elif error is not None:
            calls_exercise = not is_solution(cell) and names_used_unwrapped(cell.source) & names
            if not (calls_exercise and error.ename == "NotImplementedError"):
                first_line = cell.source.splitlines()[0][:70]
                problems.append(f"{where}: {error.ename}: {error.evalue} in {first_line!r}")
    assert not problems, f"{lecture.name}, student version:\n" + "\n".join(problems)
