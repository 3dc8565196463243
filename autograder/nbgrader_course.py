"""nbgrader's course folder for the TAs: where formgrader and ``generate_feedback`` find the
graded notebooks.

It lives beside the SQLite gradebook, as ``nbgrader/`` (``<repo>/nbgrader/`` by default; with a
database server given by ``--db``, in the repository root), in nbgrader's own layout::

    nbgrader/nbgrader_config.py                       course id, this folder, the gradebook URL
    nbgrader/source/<assignment>/explore.ipynb        the TA's source notebook
    nbgrader/autograded/<student>/<assignment>/explore.ipynb   written by each grading
    nbgrader/feedback/<student>/<assignment>/explore.html      written by nbgrader generate_feedback

so ``cd nbgrader && nbgrader formgrader`` opens every student's notebook for manual grading, and
``nbgrader generate_feedback ASSIGNMENT`` renders the students' notebook feedback. The scores in
the gradebook are the batch's (:mod:`autograder.gradebook`); this folder holds the notebooks.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from autograder.config import Assignment, Course
from autograder.grading import atomic
from autograder.nbgrader_db import database_url, sqlite_path

FOLDER = "nbgrader"
CONFIG = "nbgrader_config.py"
DB_URL_VARIABLE = "AUTOGRADER_DB_URL"  # overrides the URL in the config (e.g. with a password)


def course_folder(course: Course, db_url: str | None = None) -> Path:
    """``nbgrader/`` beside the SQLite gradebook, or in the repository root for a server."""
    path = sqlite_path(database_url(course, db_url))
    base = path.resolve().parent if path is not None else Path(course.root).resolve()
    return base / FOLDER


def save_autograded(
    folder: Path, course: Course, assignment: Assignment, student: str, graded: Path, url: str
) -> Path:
    """Put ``student``'s graded notebook where formgrader looks for it, and make sure the
    folder's configuration and source notebook are there; returns the notebook's new path."""
    _write_if_changed(folder / CONFIG, config_text(course, folder, url).encode())
    source = assignment.solution_dir / graded.name
    if source.is_file():
        _write_if_changed(folder / "source" / assignment.name / graded.name, source.read_bytes())
    target = folder / "autograded" / student / assignment.name
    target.mkdir(parents=True, exist_ok=True)
    stamp = graded.parent / "timestamp.txt"  # nbgrader's submission time, shown by formgrader
    if stamp.is_file():
        shutil.copyfile(stamp, target / stamp.name)
    return atomic.write_bytes(target / graded.name, graded.read_bytes())


def config_text(course: Course, folder: Path, url: str) -> str:
    """``nbgrader_config.py`` for the folder; a URL with a password is not written down (the
    TA sets ``AUTOGRADER_DB_URL`` instead)."""
    from sqlalchemy.engine import make_url

    written = url
    try:
        if make_url(url).password:
            written = make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable: written as given, nbgrader will say what is wrong
        pass
    return (
        "# Written by `autograder grade`: nbgrader's course folder for formgrader and\n"
        "# generate_feedback. Run nbgrader from this folder.\n"
        "import os\n\n"
        "c = get_config()  # noqa: F821\n"
        f"c.CourseDirectory.root = {str(folder.resolve())!r}\n"
        f"c.CourseDirectory.course_id = {course.id!r}\n"
        f"c.CourseDirectory.db_url = os.environ.get({DB_URL_VARIABLE!r}) or {written!r}\n"
    )


def _write_if_changed(path: Path, data: bytes) -> None:
    if not path.is_file() or path.read_bytes() != data:
        atomic.write_bytes(path, data)
