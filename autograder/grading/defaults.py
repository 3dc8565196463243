"""The extensions every ``autograder grade`` runs: the notebook stage and the gradebook sink.

Their own module so that :mod:`autograder.grading.batch` stays the pipeline alone.
"""

from __future__ import annotations

from functools import partial, update_wrapper

from autograder.config import Assignment, Course
from autograder.gradebook import GradebookSink
from autograder.grading.extensions import Extensions
from autograder.grading.notebook_stage import notebook_fingerprint, notebook_stage
from autograder.nbgrader_course import course_folder
from autograder.notebook import has_notebook


def default_extensions(course: Course, assignment: Assignment, db_url: str | None) -> Extensions:
    """The stages and sinks every ``autograder grade`` runs (the notebook and the gradebook).

    Cheap to build: nbgrader is imported, and the gradebook opened, by the first stage or sink
    call that needs them, so a batch that only resumes never pays for them.
    """
    extensions = Extensions(sinks=[GradebookSink(course, assignment, db_url)])
    if has_notebook(assignment):
        # The graded notebooks also go to nbgrader's course folder, for formgrader.
        folder = course_folder(course, db_url)
        stage = partial(notebook_stage, formgrader=folder, db_url=db_url)
        extensions.stages.append(update_wrapper(stage, notebook_stage))
        # The notebook is read from the submission, not from its student files: in the key.
        extensions.fingerprints.append(partial(notebook_fingerprint, assignment))
    return extensions
