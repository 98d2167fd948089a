"""Make the student versions of the lectures, with nbgrader's own preprocessors.

    python scripts/make_assignments.py --out student/            # every lecture
    python scripts/make_assignments.py --out student/ 01 02      # only lectures 01 and 02
    python scripts/make_assignments.py --course course/          # an nbgrader course folder instead

The committed lectures hold the solutions. A student version of ``lectures/NN_name.ipynb`` is
written to ``<out>/NN_name/NN_name.ipynb`` (the layout of nbgrader's ``release/`` folder, one
assignment per lecture, named like the lecture) and differs from the lecture in exactly this:

* every ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region becomes
  ``# YOUR CODE HERE`` / ``raise NotImplementedError()`` (the signature and docstring around it
  stay, so the student fills in a function body);
* every ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS`` block is removed from the
  autograded test cells (the instructor's copy keeps it and grades with it);
* every output is cleared, so no figure or printout gives a solution away;
* solution and test cells are locked or unlocked as their ``nbgrader`` metadata says, and carry
  the checksums nbgrader's autograder uses to notice a test cell that was edited;
* the jupytext pairing and the saved widget state are dropped from the notebook's metadata: a
  student notebook stands alone (no ``.py`` twin appears beside it on save) and its widgets are
  created again when it runs.

The preprocessors are the ones ``nbgrader generate_assignment`` runs, in its order, minus the
one that writes nbgrader's database (``SaveCells``), so no gradebook is needed here.

Grading with nbgrader itself
----------------------------
The lectures are valid nbgrader source notebooks as they are (``tests/test_assignments.py``
checks that nbgrader's ``generate_assignment`` accepts them and produces the same cells as this
script). ``--course DIR`` lays them out the way nbgrader expects::

    DIR/source/01_change_of_variables/01_change_of_variables.ipynb
    DIR/source/02_planar_radial_flows/02_planar_radial_flows.ipynb
    ...

and an instructor then works in ``DIR`` with the usual commands::

    cd DIR
    nbgrader generate_assignment 01_change_of_variables     # -> release/01_change_of_variables/
    nbgrader autograde 01_change_of_variables               # after collecting submitted/<student>/...
    nbgrader generate_feedback 01_change_of_variables

The notebooks import ``flowlib``: the grading environment needs it installed
(``pip install -r requirements-dev.txt`` from this repository does that).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import nbformat
from nbformat import NotebookNode

REPO = Path(__file__).resolve().parents[1]
LECTURES = REPO / "lectures"

#: Notebook metadata that belongs to the instructor's copy only (see the module docstring).
INSTRUCTOR_ONLY_METADATA = ("jupytext", "widgets")


def lecture_notebooks(lectures_dir: Path = LECTURES, only: Sequence[str] = ()) -> list[Path]:
    """The lectures ``NN_name.ipynb``, sorted; ``only`` keeps those whose name starts with one of these."""
    notebooks = sorted(lectures_dir.glob("[0-9][0-9]_*.ipynb"))
    if only:
        notebooks = [nb for nb in notebooks if any(nb.name.startswith(prefix) for prefix in only)]
    return notebooks


def student_pipeline() -> list:
    """nbgrader's ``generate_assignment`` preprocessors, in its order, without the database ones.

    nbgrader runs ``ClearHiddenTests`` after computing checksums and saving cells, then computes
    the checksums again: the released test cells must carry the checksum of what the student
    actually sees.
    """
    # Imported here so that ``--help`` works without nbgrader installed.
    from nbgrader.preprocessors import (
        CheckCellMetadata,
        ClearHiddenTests,
        ClearMarkScheme,
        ClearOutput,
        ClearSolutions,
        ComputeChecksums,
        LockCells,
    )

    return [
        LockCells(),
        ClearSolutions(),
        ClearOutput(),
        CheckCellMetadata(),
        ComputeChecksums(),
        ClearHiddenTests(),
        ClearMarkScheme(),
        ComputeChecksums(),
        CheckCellMetadata(),
    ]


def student_version(notebook: NotebookNode) -> NotebookNode:
    """The student version of a lecture notebook (a new notebook; the argument is not changed)."""
    student = nbformat.from_dict(notebook)  # a deep copy: the preprocessors edit in place
    resources: dict = {}
    for preprocessor in student_pipeline():
        student, resources = preprocessor.preprocess(student, resources)
    for key in INSTRUCTOR_ONLY_METADATA:
        student.metadata.pop(key, None)
    return student


def make_assignments(out: Path, only: Sequence[str] = (), lectures_dir: Path = LECTURES) -> list[Path]:
    """Write ``out/<lecture>/<lecture>.ipynb`` for every lecture; returns the files written."""
    written = []
    notebooks = lecture_notebooks(lectures_dir, only)
    if not notebooks:
        raise SystemExit(f"no lecture notebook matches {list(only)} in {lectures_dir}")
    for source in notebooks:
        student = student_version(nbformat.read(source, as_version=4))
        nbformat.validate(student)
        target = out / source.stem / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(student, target)
        written.append(target)
    return written


def make_course_source(course: Path, only: Sequence[str] = (), lectures_dir: Path = LECTURES) -> list[Path]:
    """Copy the lectures, unchanged, to ``course/source/<lecture>/<lecture>.ipynb`` for nbgrader."""
    written = []
    for source in lecture_notebooks(lectures_dir, only):
        target = course / "source" / source.stem / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lectures", nargs="*", metavar="NN",
                        help="only the lectures whose file name starts with these (e.g. 01 02); default: all")
    parser.add_argument("--out", type=Path, default=REPO / "student",
                        help="folder for the student versions (default: student/, git-ignored)")
    parser.add_argument("--course", type=Path, default=None,
                        help="instead, copy the lectures as nbgrader source notebooks into this course")
    args = parser.parse_args(argv)

    if args.course is not None:
        for path in make_course_source(args.course, args.lectures):
            print(f"nbgrader source: {path}")
        print(f"then: cd {args.course} && nbgrader generate_assignment <assignment>")
        return 0
    for path in make_assignments(args.out, args.lectures):
        print(f"student version: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
