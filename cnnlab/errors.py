"""Errors cnnlab raises at its boundaries (CLI, file loaders, public constructors).

Every message says what was wrong and what to do about it. The CLI turns a
``CnnlabError`` into a one-line ``cnnlab: ...`` message and exit code 2.
"""


class CnnlabError(ValueError):
    """Base class: bad input a user can fix (shape, name, file, option)."""


class ShapeError(CnnlabError):
    """An array does not have the shape an op or module expects."""


class UnsupportedConfigError(CnnlabError):
    """An algorithm was asked to handle a configuration it cannot (e.g. Winograd with stride 2)."""


class FileFormatError(CnnlabError):
    """A file is missing, truncated, corrupt or not of the expected kind."""


class ChecksumError(FileFormatError):
    """A downloaded file's sha256 does not match the published one."""
