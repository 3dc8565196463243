"""Reading submissions: folder and zip layouts, unsafe zip entries, bombs, broken archives."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import pytest

from autograder.config import load_course
from autograder.grading import submission_reader, unpack
from autograder.grading.unpack import StudentFiles, SubmissionError, collect_submission
from autograder.grading.workspace import prepare_workspace, student_file_names

WANTED = ["change_of_variables.py", "coupling.py"]


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize(
    "prefix", ["flows/", "alice/flows/", ""], ids=["top", "one-folder-down", "bare-files"]
)
def test_zip_layouts(tmp_path: Path, prefix: str) -> None:
    entries = {f"{prefix}coupling.py": b"X = 1\n", f"{prefix}base.py": b"ignored\n"}
    files = collect_submission(make_zip(tmp_path / "alice.zip", entries), WANTED)
    assert files.files == {"coupling.py": b"X = 1\n"}
    assert files.missing == ["change_of_variables.py"]


def test_folder_one_level_down(tmp_path: Path) -> None:
    (tmp_path / "bob" / "copy" / "flows").mkdir(parents=True)
    (tmp_path / "bob" / "copy" / "flows" / "coupling.py").write_bytes(b"\xff\xfe not utf-8")
    files = collect_submission(tmp_path / "bob", WANTED)
    assert files.files == {"coupling.py": b"\xff\xfe not utf-8"}, "bytes pass through as they are"


def test_zip_slip_and_absolute_paths_are_skipped(tmp_path: Path) -> None:
    entries = {
        "../flows/coupling.py": b"evil",
        "/flows/change_of_variables.py": b"evil",
        "flows/../../x.py": b"evil",
        "README.txt": b"hello",
    }
    files = collect_submission(make_zip(tmp_path / "evil.zip", entries), WANTED)
    assert files.files == {}
    assert sum("unsafe path" in note for note in files.notes) == 3


def test_zip_symlink_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo("flows/coupling.py")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
        archive.writestr("flows/change_of_variables.py", "Y = 2\n")
    files = collect_submission(path, WANTED)
    assert files.files == {"change_of_variables.py": b"Y = 2\n"}
    assert any("symlink" in note for note in files.notes)


def test_zip_bomb_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(submission_reader, "MAX_TOTAL_BYTES", 1500)
    entries = {"flows/change_of_variables.py": b"a" * 1000, "flows/coupling.py": b"b" * 1000}
    files = collect_submission(make_zip(tmp_path / "bomb.zip", entries), WANTED)
    assert list(files.files) == ["change_of_variables.py"]
    assert files.missing == ["coupling.py"]
    assert any("over the limit" in note for note in files.notes)


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"this is not a zip", "not a valid zip file"), (None, "the submission is empty")],
)
def test_unreadable_submission_is_one_line_error(
    tmp_path: Path, content: bytes | None, problem: str
) -> None:
    path = tmp_path / "alice.zip"
    if content is None:
        zipfile.ZipFile(path, "w").close()
    else:
        path.write_bytes(content)
    with pytest.raises(SubmissionError, match=rf"^alice\.zip: {problem}") as error:
        collect_submission(path, WANTED)
    assert "\n" not in str(error.value)


def test_workspace_uses_course_files_and_stubs(tmp_path: Path) -> None:
    assignment = load_course(Path(__file__).resolve().parents[1]).assignment("normalizing_flows")
    student = StudentFiles(files={"coupling.py": b"# mine\n"}, missing=["maf.py"])
    workspace = prepare_workspace(assignment, student, tmp_path)
    flows = workspace / "flows"
    assert (flows / "coupling.py").read_bytes() == b"# mine\n"
    release = assignment.release_dir / "flows"
    for name in ["base.py", "data.py", "__init__.py", "maf.py"]:
        assert (flows / name).read_bytes() == (release / name).read_bytes()
    assert sorted(student_file_names(assignment)) == sorted(f"{p}.py" for p in assignment.parts)


# --- refusals: links, hard links, devices, oversize files -------------------------------------


def reference_files(root: Path) -> Path:
    """A folder of "course" files a link could point at (stands for the solutions)."""
    (root / "course" / "flows").mkdir(parents=True)
    for name in WANTED:
        (root / "course" / "flows" / name).write_bytes(b"SOLUTION = True\n")
    return root / "course"


def assert_refused(files: StudentFiles, path: str, reason: str) -> None:
    assert files.refused.get(path, "").startswith(reason), files.refused
    assert f"refused {path}: {reason}" in "\n".join(files.flags())
    notes = "\n".join(files.feedback_notes())
    assert f"{path} in your submission was refused: it is {reason}" in notes
    assert "not in your submission" not in notes, notes
    assert b"SOLUTION" not in b"".join(files.files.values())


def test_symlinked_flows_folder_is_refused_not_followed(tmp_path: Path) -> None:
    course = reference_files(tmp_path)
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "flows").symlink_to(course / "flows", target_is_directory=True)
    files = collect_submission(tmp_path / "alice", WANTED)
    assert files.files == {} and files.missing == WANTED
    assert_refused(files, "flows", unpack.SYMLINK)
    assert all("was not read (refused: flows)" in n for n in files.feedback_notes()[1:])


def test_symlinked_file_is_refused(tmp_path: Path) -> None:
    course = reference_files(tmp_path)
    (tmp_path / "alice" / "flows").mkdir(parents=True)
    (tmp_path / "alice" / "flows" / "coupling.py").symlink_to(course / "flows" / "coupling.py")
    (tmp_path / "alice" / "flows" / "change_of_variables.py").write_bytes(b"MINE = 1\n")
    files = collect_submission(tmp_path / "alice", WANTED)
    assert files.files == {"change_of_variables.py": b"MINE = 1\n"}
    assert files.missing == ["coupling.py"]
    assert_refused(files, "flows/coupling.py", unpack.SYMLINK)


def test_symlinked_parent_folder_is_refused(tmp_path: Path) -> None:
    """The copy one folder down (``alice/<copy>/flows``) is itself a link to the course."""
    course = reference_files(tmp_path)
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "copy").symlink_to(course, target_is_directory=True)
    files = collect_submission(tmp_path / "alice", WANTED)
    assert files.files == {}
    assert_refused(files, "copy", unpack.SYMLINK)


def test_hard_link_is_refused(tmp_path: Path) -> None:
    course = reference_files(tmp_path)
    (tmp_path / "alice" / "flows").mkdir(parents=True)
    os.link(course / "flows" / "coupling.py", tmp_path / "alice" / "flows" / "coupling.py")
    (tmp_path / "alice" / "flows" / "change_of_variables.py").write_bytes(b"MINE = 1\n")
    files = collect_submission(tmp_path / "alice", WANTED)
    assert_refused(files, "flows/coupling.py", "a hard link (the file has 2 names)")


def test_oversize_file_and_fifo_are_refused(tmp_path: Path) -> None:
    (tmp_path / "alice" / "flows").mkdir(parents=True)
    big = tmp_path / "alice" / "flows" / "coupling.py"
    with big.open("wb") as handle:  # sparse: the size is what counts, not the disk used
        handle.truncate(unpack.MAX_FILE_BYTES + 1)
    os.mkfifo(tmp_path / "alice" / "flows" / "change_of_variables.py")
    files = collect_submission(tmp_path / "alice", WANTED)
    assert files.files == {}
    assert_refused(files, "flows/coupling.py", "larger than the 2097152 bytes")
    assert_refused(files, "flows/change_of_variables.py", "not a regular file")


def test_link_swapped_in_after_listing_is_refused(tmp_path: Path) -> None:
    """The reader opens each component with O_NOFOLLOW: replacing a listed file (or its
    folder) by a link between listing and reading does not make the grader follow it."""
    course = reference_files(tmp_path)
    flows = tmp_path / "alice" / "flows"
    flows.mkdir(parents=True)
    (flows / "coupling.py").write_bytes(b"MINE = 1\n")
    with submission_reader.open_entries(tmp_path / "alice") as entries:
        assert "flows/coupling.py" in entries.names()
        (flows / "coupling.py").unlink()
        (flows / "coupling.py").symlink_to(course / "flows" / "coupling.py")
        refused: dict[str, str] = {}
        assert entries.read("flows/coupling.py", refused) is None
        assert refused == {"flows/coupling.py": unpack.SYMLINK}
        flows.rename(tmp_path / "moved")
        flows.symlink_to(course / "flows", target_is_directory=True)
        assert entries.read("flows/coupling.py", refused) is None
        assert refused["flows"] == unpack.SYMLINK


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_submission_path_that_is_a_link_is_refused(tmp_path: Path, kind: str) -> None:
    if kind == "folder":
        target = reference_files(tmp_path)
    else:
        target = make_zip(tmp_path / "real.zip", {"flows/coupling.py": b"X = 1\n"})
    link = tmp_path / ("alice.zip" if kind == "zip" else "alice")
    link.symlink_to(target)
    with pytest.raises(SubmissionError, match=r"^alice(\.zip)?: refused: .*symbolic link$"):
        collect_submission(link, WANTED)


def test_zip_symlink_entry_is_a_flag(tmp_path: Path) -> None:
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo("alice/flows/coupling.py")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/work/solutions/flows/coupling.py")
        archive.writestr("alice/flows/change_of_variables.py", "Y = 2\n")
    files = collect_submission(path, WANTED)
    assert files.files == {"change_of_variables.py": b"Y = 2\n"}
    assert_refused(files, "alice/flows/coupling.py", unpack.SYMLINK)


def test_missing_file_without_refusal_says_not_in_submission(tmp_path: Path) -> None:
    (tmp_path / "alice" / "flows").mkdir(parents=True)
    (tmp_path / "alice" / "flows" / "coupling.py").write_bytes(b"X = 1\n")
    (tmp_path / "alice" / "notes.txt").symlink_to("/etc/hostname")  # unrelated: not reported
    files = collect_submission(tmp_path / "alice", WANTED)
    assert files.refused == {} and files.flags() == []
    assert files.feedback_notes() == [
        "flows/change_of_variables.py is not in your submission: the stub was graded instead"
    ]


def test_missing_submission_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(SubmissionError, match=r"^nobody: no such file or folder$"):
        collect_submission(tmp_path / "nobody", WANTED)
