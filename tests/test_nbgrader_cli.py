"""nbgrader's own command-line tools grade every lecture with exercises, as an instructor would.

For each lecture ``lectures/NN_*.ipynb`` with graded cells (found from its nbgrader metadata),
in a course folder of its own made by ``scripts/make_assignments.py --course``:

1. ``nbgrader generate_assignment <lecture>`` writes the gradebook and ``release/``;
2. two students hand in: ``blank`` submits the released student version unchanged, ``solved``
   submits the released version with every solution cell filled in from the lecture;
3. ``nbgrader autograde <lecture>`` runs both submissions (``CI=true``, so training is short)
   with the instructor's test cells put back, hidden tests included;
4. ``nbgrader generate_feedback <lecture>`` writes each student's feedback page.

The gradebook must then hold exactly 0 points for ``blank`` and the full score for ``solved``,
cell by cell, the full score being the sum of the lecture's ``points``; both feedback pages
must exist. This is what :mod:`tests.test_assignments` checks with nbclient, done here with
the tools an instructor actually runs, database and checksums included.

Each lecture gets its own course folder (and so its own SQLite gradebook), so the lectures
are graded side by side, ``PARALLEL_LECTURES`` at a time: one after the other they take
about 10 minutes on a busy 2-core machine at CI sizes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
from nbformat import NotebookNode

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "make_assignments.py"
LECTURES = sorted((REPO / "lectures").glob("[0-9][0-9]_*.ipynb"))

pytest.importorskip("nbgrader", reason="nbgrader is not installed (requirements-dev.txt installs it)")

#: Seconds a single cell may run under autograde. nbgrader's default (30 s) is shorter than
#: the training cells of the image lectures even at CI sizes; this only has to stop a hang.
CELL_TIMEOUT_S = 600
#: Lectures graded at the same time (each round is nbgrader and a kernel, one core's worth of
#: work at CI sizes). Two halve the wall time on an idle 2-core machine; ``FLOWLIB_NBGRADER_JOBS``
#: overrides it (1: one lecture after the other).
PARALLEL_LECTURES = max(1, int(os.environ.get("FLOWLIB_NBGRADER_JOBS", "2")))
#: The two submissions, by student id.
BLANK, SOLVED = "blank", "solved"
SOLUTION_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")


def read(path: Path) -> NotebookNode:
    return nbformat.read(path, as_version=4)


def nbgrader_meta(cell: NotebookNode) -> dict:
    return cell.metadata.get("nbgrader", {})


def graded_points(nb: NotebookNode) -> dict[str, float]:
    """``grade_id -> points`` of the graded (autograded test) cells."""
    return {nbgrader_meta(c)["grade_id"]: float(nbgrader_meta(c)["points"])
            for c in nb.cells if nbgrader_meta(c).get("grade")}


GRADED_LECTURES = [p for p in LECTURES if graded_points(read(p))]


def nbgrader_env() -> dict[str, str]:
    """This environment, with ``CI=true`` and the venv's ``bin`` first on ``PATH``.

    nbgrader creates its gradebook by running ``alembic``, installed beside it, as a command;
    the kernels it starts inherit ``CI`` (the notebooks shorten their training) and whatever
    conftest.py set (``FLOWLIB_DATA``, ``MPLBACKEND=Agg``, the thread count).
    """
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "CI": "true", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``python -m nbgrader <args>`` in the course folder; fails the test on a non-zero exit."""
    run = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=nbgrader_env(),
                         capture_output=True, text=True)
    assert run.returncode == 0, (f"nbgrader {' '.join(args)} exited with {run.returncode}:\n"
                                 f"{run.stdout[-3000:]}\n{run.stderr[-6000:]}")
    return run


def solved_version(released: NotebookNode, lecture: NotebookNode) -> NotebookNode:
    """The released notebook with each solution cell's source taken from the lecture.

    That is what a student who found the reference answer would hand in: the locked cells are
    the released ones (with their checksums), only the answer cells differ. The solution
    markers are left out, as a student would not type them.
    """
    answers = {nbgrader_meta(c)["grade_id"]: c.source
               for c in lecture.cells if nbgrader_meta(c).get("solution")}
    solved = nbformat.from_dict(released)
    for cell in solved.cells:
        meta = nbgrader_meta(cell)
        if meta.get("solution"):
            lines = answers[meta["grade_id"]].split("\n")
            cell.source = "\n".join(line for line in lines if line.strip() not in SOLUTION_MARKERS)
    return solved


def submit(course: Path, student: str, assignment: str, nb: NotebookNode, name: str) -> None:
    target = course / "submitted" / student / assignment / name
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)


def grade(lecture: Path, course: Path) -> dict:
    """The whole instructor's round on one lecture in ``course``; returns, read from the
    gradebook, each student's ``(score, max_score, {grade_id: (score, max_score)})``."""
    from nbgrader.api import Gradebook

    assignment = lecture.stem
    subprocess.run([sys.executable, str(SCRIPT), "--course", str(course), assignment], check=True,
                   cwd=REPO, capture_output=True, text=True)
    source = course / "source" / assignment / lecture.name
    assert source.is_file(), f"make_assignments.py --course did not write {source}"
    assert read(source) == read(lecture), "the course's source notebook should be the lecture, unchanged"

    nbgrader(course, "generate_assignment", assignment)
    released = read(course / "release" / assignment / lecture.name)
    submit(course, BLANK, assignment, released, lecture.name)
    submit(course, SOLVED, assignment, solved_version(released, read(lecture)), lecture.name)

    nbgrader(course, "autograde", assignment, f"--Execute.timeout={CELL_TIMEOUT_S}")
    nbgrader(course, "generate_feedback", assignment)

    scores: dict = {"course": course}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        scores["assignment max"] = gradebook.find_assignment(assignment).max_score
        for student in (BLANK, SOLVED):
            submission = gradebook.find_submission_notebook(lecture.stem, assignment, student)
            scores[student] = (submission.score, submission.max_score,
                               {g.name: (g.score, g.max_score) for g in submission.grades})
    return scores


@pytest.fixture(scope="module")
def graded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Future]:
    """Every selected lecture graded, PARALLEL_LECTURES at a time, each in its own course folder.

    All rounds start when the first test asks, so the lectures grade side by side; each test
    then waits for its own. A failed round re-raises in its lecture's test only.
    """
    selected = {item.callspec.params["lecture"] for item in request.session.items
                if getattr(item, "module", None) is sys.modules[__name__] and hasattr(item, "callspec")}
    pool = ThreadPoolExecutor(max_workers=PARALLEL_LECTURES)  # threads: the work is in subprocesses
    request.addfinalizer(lambda: pool.shutdown(wait=True, cancel_futures=True))
    return {lecture.stem: pool.submit(grade, lecture, tmp_path_factory.mktemp(lecture.stem) / "course")
            for lecture in GRADED_LECTURES if lecture in selected}


@pytest.mark.parametrize("lecture", GRADED_LECTURES, ids=lambda p: p.stem)
def test_nbgrader_cli_grades_blank_zero_and_solved_full(lecture: Path, graded: dict[str, Future]) -> None:
    scores = graded[lecture.stem].result()
    points = graded_points(read(lecture))
    maximum = sum(points.values())
    assert scores["assignment max"] == maximum, f"gradebook max {scores['assignment max']}, points {maximum}"
    expected = {BLANK: dict.fromkeys(points, 0.0), SOLVED: points}  # per graded cell
    for student, expected_cells in expected.items():
        score, max_score, cells = scores[student]
        assert max_score == maximum, f"{student}: max score {max_score}, the points add to {maximum}"
        assert set(cells) == set(points), f"{student}: graded cells {sorted(cells)}, not {sorted(points)}"
        wrong = {name: got for name, got in cells.items() if got[0] != expected_cells[name]}
        assert not wrong, f"{student}: cells scored (score, max) {wrong}, expected {expected_cells}"
        assert score == sum(expected_cells.values()), f"{student}: score {score} of {maximum}"
        page = scores["course"] / "feedback" / student / lecture.stem / f"{lecture.stem}.html"
        assert page.is_file() and page.stat().st_size > 0, f"no feedback page {page}"
        assert lecture.stem in page.read_text(encoding="utf-8"), f"{page} does not name the assignment"


def test_every_lecture_with_exercises_is_graded() -> None:
    """The list above comes from the metadata: a lecture whose graded cells were lost would
    silently drop out of it, so its exercises are counted here from the source text too."""
    with_markers = [p for p in LECTURES if "### BEGIN SOLUTION" in p.read_text(encoding="utf-8")]
    assert with_markers == GRADED_LECTURES, "lectures with solutions but no graded cells, or the reverse"
