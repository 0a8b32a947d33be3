"""Which HTTP requests to an MLflow server may be sent again, and how.

MLflow's HTTP session retries every method, POST included, on 5xx, read errors and dropped
connections. For a `create` that is wrong: a 503 or a reset that arrives after the server
committed the object makes urllib3 send the request again, and the server makes a second
object (seen as duplicate runs under a faulty proxy). So this module gives MLflow's session a
retry policy that knows which endpoints create:

- a request that **creates** (`runs/create`, `experiments/create`, a logged model, a model
  version, …) is re-sent only when it certainly never reached the server (the connection
  could not be opened) or the server refused it unprocessed (429). Any other failure is
  ambiguous and goes back to the caller, who looks the object up by its lineage key before
  creating again (`migrator.once`);
- every other request (reads, `log_batch`, tags, deletes, artifact PUTs: all idempotent) is
  retried with exponential backoff and jitter on 408/429/5xx, read errors and dropped
  connections, honouring `Retry-After` (capped), up to MLflow's
  `MLFLOW_HTTP_REQUEST_MAX_RETRIES`; each retry is logged.

4xx answers other than 408/429 are final (MLflow's own status list). Installed once per
process by `install()`, before the first session is made, together with the adapter that sets
each side's credentials (`migrator.credentials`).
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any
from urllib.parse import urlparse

from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

log = logging.getLogger(__name__)

#: Paths (after the API version) whose POST makes a new object: never re-sent blindly.
_CREATES = re.compile(
    r"/(?:ajax-)?api/[0-9.]+/mlflow/(?:"
    r"runs/create|experiments/create|logged-models|model-versions/create"
    r"|registered-models/create|runs/log-inputs|runs/outputs|traces|prompts/create"
    r"|datasets/create|scorers/register|webhooks|traces/[^/]+/assessments|issues"
    r"|label-schemas/create|review-queues/create"
    r")/?$"
)
#: The longest a `Retry-After` is waited for, in seconds (a server may ask for an hour).
RETRY_AFTER_CAP_S = 30.0
#: Statuses a server sends before doing anything: safe to send a create again after them.
_REFUSED_UNPROCESSED = {429}


def creates(method: str | None, url: str | None) -> bool:
    """Whether this request makes a new object, so that sending it twice may make two."""
    if (method or "").upper() != "POST" or not url:
        return False
    return bool(_CREATES.search(urlparse(url).path))


class CreateAwareRetry(Retry):
    """urllib3's Retry, except that creates are re-sent only when that is certainly safe, and
    every retry is logged."""

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> CreateAwareRetry:
        status = getattr(response, "status", None)
        if creates(method, url) and not _never_reached(self, error, status):
            reason = error or Exception(f"HTTP {status} to a create (not re-sent)")
            raise MaxRetryError(_pool, url or "", reason)  # type: ignore[arg-type]
        new = super().increment(method, url, response, error, _pool, _stacktrace)
        cause = f"HTTP {status}" if status else type(error).__name__ if error else "?"
        log.info(
            "retrying %s %s after %s (%s retries left)",
            method,
            urlparse(url or "").path,
            cause,
            new.total,
        )
        return new

    def get_retry_after(self, response: Any) -> float | None:
        after = super().get_retry_after(response)
        return None if after is None else min(after, RETRY_AFTER_CAP_S)


def _never_reached(retry: Retry, error: Exception | None, status: int | None) -> bool:
    """The request never reached the server (no connection), or the server refused it
    before doing anything (429)."""
    if error is not None:
        return retry._is_connection_error(error)
    return status in _REFUSED_UNPROCESSED


@functools.lru_cache(maxsize=1)
def install() -> None:
    """Make MLflow's HTTP sessions in this process use `CreateAwareRetry`, and set each
    request's credentials for its side (`migrator.credentials.authorize`).

    MLflow builds its sessions (cached) from `urllib3.util.Retry` and its keep-alive adapter
    by name in `mlflow.utils.request_utils`; those names are pointed at subclasses and the
    cache dropped. Its sessions also read the environment once per server
    (`_environment_read_once_per_origin`). Each replacement keeps MLflow's own as
    `mlflow_own`, so a second install (tests) wraps MLflow's, not the first install's.
    """
    from mlflow.utils import request_utils

    from migrator.credentials import authorize

    base: Any = mlflow_own(request_utils.TCPKeepAliveHTTPAdapter)

    class SideAwareAdapter(base):  # type: ignore[misc, valid-type]
        """MLflow's adapter, setting the credentials of the server a request goes to."""

        mlflow_own = base

        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            authorize(request)
            return super().send(request, *args, **kwargs)

    make_session = mlflow_own(request_utils._cached_get_request_session)

    @functools.lru_cache(maxsize=64)
    def session_reading_the_environment_once(*args: Any, **kwargs: Any) -> Any:
        return _environment_read_once_per_origin(make_session(*args, **kwargs))

    session_reading_the_environment_once.mlflow_own = make_session  # type: ignore[attr-defined]
    request_utils.Retry = CreateAwareRetry  # type: ignore[misc]
    request_utils.TCPKeepAliveHTTPAdapter = SideAwareAdapter  # type: ignore[misc]
    make_session.cache_clear()
    request_utils._cached_get_request_session = session_reading_the_environment_once  # type: ignore[assignment]


def mlflow_own(obj: Any) -> Any:
    """MLflow's own session maker or adapter, under the one `install` put in its place."""
    return getattr(obj, "mlflow_own", obj)


def _environment_read_once_per_origin(session: Any) -> Any:
    """The session, reading the environment's proxy and CA settings once per server.

    requests reads them before every request (`merge_environment_settings` walks every
    variable of the environment twice to find the `*_proxy` ones): 0.09 ms of the tool's CPU
    per request with 42 variables, 0.34 ms with 143, and a migration sends a dozen requests
    per run to the same two servers while the environment does not change under it. The
    proxies depend only on the scheme and host (and `NO_PROXY`), so the settings are kept
    per origin; a request that passes proxies of its own is merged as requests does."""
    merge = session.merge_environment_settings

    @functools.lru_cache(maxsize=256)
    def per_origin(origin: str, stream: Any, verify: Any, cert: Any) -> dict[str, Any]:
        return dict(merge(origin, {}, stream, verify, cert))

    def merge_environment_settings(
        url: str, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        if proxies:  # its own proxies: merged as requests does
            return dict(merge(url, proxies, stream, verify, cert))
        parts = urlparse(url)
        try:
            settings = per_origin(f"{parts.scheme}://{parts.netloc}/", stream, verify, cert)
        except TypeError:  # settings that cannot be a key (a cert given as a list)
            return dict(merge(url, proxies, stream, verify, cert))
        return {**settings, "proxies": dict(settings["proxies"])}

    session.merge_environment_settings = merge_environment_settings
    return session
