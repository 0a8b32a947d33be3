"""The error tree of the migrator; every error names the object it is about.

```
MigratorError                  base; carries `obj` (e.g. "run 3f2a…") and `stage`
├── ConfigError                bad option, bad URI, unreachable server: fail before any work
├── Interrupted                stopped part way (a server went away): re-run to resume
├── TransientError             worth retrying (connection reset, 429, 5xx)
├── PermanentError             retrying will not help; the object is marked failed
│   └── StagingError           a staging object is missing, corrupt or unsafe
└── VerificationError          source and target disagree
```

Errors stay picklable (plain args only) because Ray ships them between processes.
"""

from __future__ import annotations


class MigratorError(Exception):
    """Base of all errors raised on purpose by the migrator."""

    def __init__(self, message: str, *, obj: str = "", stage: str = "") -> None:
        super().__init__(message, obj, stage)
        self.message = message
        self.obj = obj
        self.stage = stage

    def __str__(self) -> str:
        where = " ".join(p for p in (self.stage, self.obj) if p)
        return f"{where}: {self.message}" if where else self.message

    def __reduce__(self) -> tuple[type, tuple[str], dict[str, str]]:
        return (type(self), (self.message,), {"obj": self.obj, "stage": self.stage})


class ConfigError(MigratorError):
    """Bad input caught before any work starts (options, URIs, reachability)."""


class Interrupted(MigratorError):
    """The command stopped before its end (a server stopped answering). What was done is
    recorded in the manifests; the same command resumes."""


class TransientError(MigratorError):
    """A failure that may pass: the fan-out retries the object."""


class PermanentError(MigratorError):
    """A failure that retrying will not fix: the object is marked failed."""


class StagingError(PermanentError):
    """A staging object is missing, corrupt, or names a path outside its place."""


class VerificationError(MigratorError):
    """Source and target disagree."""
