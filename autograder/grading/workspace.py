"""Lay out the folder a submission is graded in: the course's ``flows/`` with the student's files.

``scratch/flows/`` receives every file of the release's ``flows/`` (the given files
``__init__.py``, ``base.py``, ``data.py``, the stubs, and the data files of the selected parts,
such as ``digits.csv.gz`` that ``data.digits()`` reads in the worker), then the student's files
on top. A student file that is missing keeps the release stub, so its tests fail with
``not implemented yet: ...`` rather than with an import error in another part.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from autograder.config import PACKAGE, Assignment
from autograder.errors import AutograderError
from autograder.grading.unpack import StudentFiles


def student_file_names(assignment: Assignment) -> list[str]:
    """The student files of ``assignment``: one ``<part>.py`` per part of ``course.yml``."""
    return [f"{part}.py" for part in assignment.parts]


def prepare_workspace(assignment: Assignment, student: StudentFiles, scratch: Path) -> Path:
    """Write ``scratch/flows/`` (release files + ``student.files``) and return ``scratch``."""
    release = assignment.release_dir / PACKAGE
    if not release.is_dir():
        raise AutograderError(
            f"{release}: the release is missing (run: autograder build {assignment.name})"
        )
    expected = set(student_file_names(assignment))
    unexpected = sorted(set(student.files) - expected)
    if unexpected:
        raise AutograderError(f"{unexpected[0]}: not a student file of {assignment.name}")
    package = Path(scratch) / PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    for given in sorted(release.iterdir()):
        # Every given file, data included (a cache of compiled modules is not one).
        if given.is_file() and given.suffix != ".pyc":
            shutil.copyfile(given, package / given.name)
    for name, data in student.files.items():
        (package / name).write_bytes(data)
    return Path(scratch)
