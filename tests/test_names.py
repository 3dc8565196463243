"""Submission names a student chose: safe output names, and a batch that they cannot break.

The unit tests check :mod:`autograder.grading.names` alone. The batch test grades, through the
real grader (one part, ``composition``, to keep it short: ~20 s per submission on 2 cores),
the reference under every hostile name at once: ``grades.csv``, ``nbgrader``, the gradebook's
own file name, ``...zip`` (stem ``..``), ``..zip`` (stem ``.``), a 240-character name and a
path-like name, with the gradebook inside ``--out`` as ``run_autograder`` has it.
"""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import pytest

from autograder.config import Assignment, Course
from autograder.errors import AutograderError
from autograder.examples import REFERENCE, materialize
from autograder.grading.batch import default_extensions, grade_batch
from autograder.grading.names import MAX_STEM, output_names, reserved_names, safe_name

RESERVED = reserved_names("sqlite:////somewhere/gradebook.db")
LONG = "s" * 240


@pytest.mark.parametrize(
    "raw",
    [".", "..", "...", "grades.csv", "GRADES.CSV", "nbgrader", "gradebook.db", "a/b", "-rf", LONG],
)
def test_unsafe_names_are_changed_into_plain_bounded_names(raw: str) -> None:
    name = safe_name(raw, RESERVED)
    assert name != raw
    assert name.lower() not in RESERVED and name not in (".", "..")
    assert "/" not in name and not name.startswith((".", "-"))
    assert len(name) <= MAX_STEM + 11
    assert safe_name(raw, RESERVED) == name, "the same raw name must give the same output name"


def test_safe_names_are_kept_as_they_are() -> None:
    for raw in ("alice", "bob_smith-2", "reference", "v1.2"):
        assert safe_name(raw, RESERVED) == raw


def test_names_that_clean_up_alike_stay_apart(tmp_path: Path) -> None:
    paths = []
    for raw in ("a b", "a_b", "a?b", "a_b-" + safe_name("a b").split("-")[-1]):
        (tmp_path / raw).mkdir()
        paths.append(tmp_path / raw)
    names = output_names(paths, RESERVED)
    assert len(names) == 4 and list(names.values()) == paths
    assert len({n.lower() for n in names}) == 4


def test_same_raw_name_twice_and_missing_path_are_refused(tmp_path: Path) -> None:
    (tmp_path / "x" / "alice").mkdir(parents=True)
    (tmp_path / "alice.zip").write_bytes(b"")
    with pytest.raises(AutograderError, match="two submissions are named 'alice'"):
        output_names([tmp_path / "x" / "alice", tmp_path / "alice.zip"])
    with pytest.raises(AutograderError, match="no such submission"):
        output_names([tmp_path / "nobody"])


def _zip(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(folder).as_posix())
    return dest


@pytest.mark.slow
def test_hostile_names_in_one_batch_cost_nothing_and_break_nothing(
    course: Course, assignment: Assignment, tmp_path: Path
) -> None:
    subs = tmp_path / "subs"
    reference = materialize(assignment, REFERENCE, tmp_path / "template")
    submissions = [
        materialize(assignment, REFERENCE, subs / "grades.csv"),
        materialize(assignment, REFERENCE, subs / "nbgrader"),
        materialize(assignment, REFERENCE, subs / "gradebook.db"),
        materialize(assignment, REFERENCE, subs / LONG),
        _zip(reference, subs / "...zip"),
        _zip(reference, subs / "..zip"),
        materialize(assignment, REFERENCE, subs / "plain"),
    ]
    parent = tmp_path / "parent"
    out = parent / "out"
    (out / "nbgrader").mkdir(parents=True)  # formgrader's folder, from an earlier batch
    (out / "nbgrader" / "nbgrader_config.py").write_text("# the TA's\n")
    db = f"sqlite:///{out / 'gradebook.db'}"  # as run_autograder has it
    extensions = default_extensions(course, assignment, db)
    before = sorted(p.name for p in tmp_path.iterdir())
    batch = grade_batch(
        course,
        assignment,
        submissions,
        out,
        jobs=2,
        db_url=db,
        parts=["composition"],
        extensions=extensions,
        progress=False,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert sorted(p.name for p in parent.iterdir()) == ["out"], "written beside --out"
    points = assignment.parts["composition"]
    names = [g.name for g in batch]
    assert len(set(names)) == len(submissions)
    assert "plain" in names
    for graded in batch:
        assert graded.out_dir.parent == out and graded.name not in (".", "..")
        assert graded.score.parts["composition"].earned == points, (graded.name, graded.run)
        results = json.loads((graded.out_dir / "results.json").read_text())
        assert not [f for f in results["extra_data"]["flags"] if "error" in f], results
    assert (out / "grades.csv").is_file() and (out / "gradebook.db").is_file()
    assert [p.name for p in (out / "nbgrader").iterdir()] == ["nbgrader_config.py"]
    rows = list(csv.DictReader((out / "grades.csv").open()))
    assert {row["submission"]: row["name"] for row in rows} == {
        str(g.submission): g.name for g in batch
    }
    # A rerun resumes every one of them (the names are stable).
    again = grade_batch(
        course,
        assignment,
        submissions,
        out,
        jobs=2,
        db_url=db,
        parts=["composition"],
        extensions=extensions,
        progress=False,
    )
    assert all(g.resumed for g in again)


@pytest.mark.slow
def test_a_submission_whose_results_cannot_be_written_fails_alone(
    course: Course, assignment: Assignment, tmp_path: Path
) -> None:
    subs = tmp_path / "subs"
    blocked = materialize(assignment, REFERENCE, subs / "blocked")
    fine = materialize(assignment, REFERENCE, subs / "fine")
    out = tmp_path / "out"
    out.mkdir()
    (out / "blocked").write_text("a file where the output folder goes")
    batch = grade_batch(
        course,
        assignment,
        [blocked, fine],
        out,
        jobs=1,
        parts=["composition"],
        extensions=default_extensions(course, assignment, f"sqlite:///{tmp_path / 'g.db'}"),
        progress=False,
    )
    by_name = {g.name: g for g in batch}
    assert by_name["fine"].score.total == assignment.parts["composition"]
    assert "could not write the results" in (by_name["blocked"].report.error or "")
    assert by_name["blocked"].key is None  # retried on the next run
    rows = {row["name"]: row for row in csv.DictReader((out / "grades.csv").open())}
    assert "could not write the results" in rows["blocked"]["flags"]
