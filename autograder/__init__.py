"""Build, release and grade the course's assignments (see README.md)."""

from autograder.errors import AutograderError

__all__ = ["AutograderError"]
