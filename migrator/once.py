"""Exactly one target object per source object: look up by lineage key, adopt, create once.

Every object the migrator makes on the target carries a lineage key from its first call: a
run or logged model its source-id tag, a model version its source-number tag, an experiment
or registered model its (unique) name. `create_once` is the one way any stage creates:

1. when an earlier attempt may have created the object (`look_first`), find it by its key;
2. otherwise send the create **once** (`migrator.transport` never re-sends a create that may
   have reached the server);
3. after an ambiguous failure (5xx, timeout, reset, "already exists") find it by its key and
   adopt it; if it is not there, raise `TransientError`, and the next attempt looks first.

Whenever a lookup finds several objects with one key (left by an older version, or by a create
that raced), the smallest by `Lineage.order` is kept and the others are discarded: they stop
carrying the key (`mlflow_exim.duplicate_of` names the kept one) and are deleted. The caller
then finishes the kept object as it would a new one, and records it in the manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from migrator.errors import MigratorError, PermanentError, TransientError
from migrator.lineage import DUPLICATE_OF_TAG

log = logging.getLogger(__name__)

__all__ = ["DUPLICATE_OF_TAG", "Lineage", "adopt", "create_once"]
#: MLflow error codes after which a create may have landed.
_AMBIGUOUS_CODES = {
    "RESOURCE_ALREADY_EXISTS",
    "INTERNAL_ERROR",
    "TEMPORARILY_UNAVAILABLE",
    "REQUEST_LIMIT_EXCEEDED",
}


@dataclass(frozen=True)
class Lineage:
    """How to find, make and discard the target object of one source object."""

    kind: str
    """What it is, for messages: `run`, `experiment`, `logged model`, …"""
    obj: str
    """Names the source object in errors (`run 3f2a…`)."""
    find: Callable[[], Sequence[Any]]
    """Every target object that carries this lineage key (exact value, checked)."""
    create: Callable[[], Any]
    """Sends the create once; returns the new object."""
    order: Callable[[Any], Any]
    """Sort key among copies: the smallest is kept (deterministic: every attempt agrees)."""
    target_id: Callable[[Any], str]
    """The target object's id, for messages and `DUPLICATE_OF_TAG`."""
    discard: Callable[[Any, str], None] | None = None
    """Make a copy stop carrying the key and delete it (`(copy, kept id)`); None where the
    server keeps the key unique (names)."""
    stage: str = "import"


def adopt(spec: Lineage, found: Sequence[Any]) -> Any:
    """The copy to keep among `found` (not empty); the others are discarded."""
    ordered = sorted(found, key=spec.order)
    kept = ordered[0]
    kept_id = spec.target_id(kept)
    for extra in ordered[1:]:
        if spec.discard is None:
            raise PermanentError(
                f"{len(found)} target {spec.kind}s carry its lineage key, and they cannot be "
                "told apart",
                obj=spec.obj,
                stage=spec.stage,
            )
        log.warning(
            "%s: discarding duplicate target %s %s (keeping %s)",
            spec.obj,
            spec.kind,
            spec.target_id(extra),
            kept_id,
        )
        spec.discard(extra, kept_id)
    return kept


def create_once(spec: Lineage, *, look_first: bool) -> Any:
    """The target object for `spec`: found (and adopted), or created with one request.

    Args:
        spec: how to find, create and discard the object.
        look_first: an earlier attempt may have created it (a create intent, a retry).
    Raises:
        TransientError: the create failed ambiguously and nothing was found; the next
            attempt (with `look_first`) finds it if it did land.
        PermanentError: the server refused the create on its merits.
    """
    from mlflow.exceptions import MlflowException

    if look_first and (found := spec.find()):
        return adopt(spec, found)
    try:
        return spec.create()
    except MlflowException as e:
        if e.error_code not in _AMBIGUOUS_CODES:
            raise
        cause: BaseException = e
    except (TransientError, OSError) as e:  # requests' errors are OSErrors
        cause = e
    except MigratorError:
        raise
    found = spec.find()
    if found:
        log.info("%s: adopted the %s an ambiguous create left (%s)", spec.obj, spec.kind, cause)
        return adopt(spec, found)
    raise TransientError(
        f"create of the {spec.kind} failed ambiguously and it is not on the target: {cause}",
        obj=spec.obj,
        stage=spec.stage,
    ) from cause
