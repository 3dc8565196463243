"""nbgrader's gradebook database: where it is, whether it exists, and creating it fast.

Its own module so that the notebook side (:mod:`autograder.notebook`, which runs nbgrader's
converters) and the gradebook side (:mod:`autograder.gradebook`, which records scores) both use
it without importing each other.
"""

from __future__ import annotations

from pathlib import Path

from autograder.config import Course

GRADEBOOK_FILE = "gradebook.db"


def database_url(course: Course, db_url: str | None = None) -> str:
    """``db_url``, or the course's SQLite file ``<repo>/gradebook.db``."""
    return db_url or sqlite_url(Path(course.root).resolve() / GRADEBOOK_FILE)


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of an SQLite file."""
    return f"sqlite:///{Path(path).resolve()}"


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL (``None`` for another database, or an in-memory one)."""
    if not url.startswith("sqlite"):
        return None
    path = url.partition(":///")[2].partition("?")[0]
    return Path(path) if path and path != ":memory:" else None


def database_exists(url: str) -> bool:
    """Whether an SQLite database file is there; a server is assumed to be (asking means
    connecting, which callers that only want to skip work avoid)."""
    if not url.startswith("sqlite"):
        return True
    path = sqlite_path(url)
    return path is not None and path.is_file()


def create_database(url: str) -> None:
    """Create nbgrader's tables, stamped with its alembic head, if the database has none.

    nbgrader's ``Gradebook`` does the same on first use but asks the ``alembic`` command line
    for the head (a subprocess, ~5 s); alembic's Python API answers it in milliseconds.
    """
    import nbgrader
    from alembic.script import ScriptDirectory
    from nbgrader.api import Base
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url, future=True)
    try:
        if inspect(engine).get_table_names():
            return
        head = ScriptDirectory(str(Path(nbgrader.__file__).parent / "alembic")).get_current_head()
        with engine.begin() as connection:
            Base.metadata.create_all(connection)
            connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
            connection.execute(text("INSERT INTO alembic_version VALUES (:v)"), {"v": head})
    finally:
        engine.dispose()


def has_tables(url: str) -> bool:
    """Whether the database at ``url`` holds any table (without creating it)."""
    from sqlalchemy import create_engine, inspect

    engine = create_engine(url, future=True)
    try:
        return bool(inspect(engine).get_table_names())
    finally:
        engine.dispose()
