"""Reading submissions: folder and zip layouts, unsafe zip entries, bombs, broken archives."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from autograder.config import load_course
from autograder.grading import submission_reader
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
