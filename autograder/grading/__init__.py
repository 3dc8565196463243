"""Grading, as a pipeline of small stages (like nbgrader's preprocessors).

``unpack`` (take the five student files out of a folder or zip) -> ``workspace`` (the course's
given files plus the student's, in a fresh scratch directory) -> ``supervisor`` (run the hidden
suites in an isolated, resource-limited child process) -> ``scoring`` (points per part from
``course.yml``) -> ``reports`` (``results.json``, ``feedback.md``, ``grades.csv``).
``batch`` runs the pipeline over many submissions in parallel and resumes after a crash.
The records passed between stages are in ``models``.
"""
