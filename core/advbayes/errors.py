"""Errors that the CLI reports as one line with exit status 2."""

from __future__ import annotations

import re


class AdvbayesError(Exception):
    """A user-facing error: the CLI prints its message as one line and exits with status 2."""

    exit_code = 2


class PluginError(AdvbayesError):
    """A plugin could not be loaded or registered something that clashes with another plugin."""


class RegistryError(AdvbayesError):
    """A registry file or entry is invalid; the message names file, entry and key."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        entry: str | None = None,
        key: str | None = None,
    ) -> None:
        self.file = file
        self.entry = entry
        self.key = key
        self.detail = message
        where = ": ".join(part for part in (file, entry and f"entry {entry}", key and f"key '{key}'") if part)
        super().__init__(f"{where}: {message}" if where else message)


class RunError(AdvbayesError):
    """A run cannot start as asked (no CUDA device, nothing to resume, ...)."""


class AttackInputError(AdvbayesError, ValueError):
    """An attack called from Python on inputs it would silently change (outside its value range), with an eps wider
    than that range, or on a model it cannot judge; a ValueError, as torchattacks raises for inputs out of range."""


class EvaluationWarning(UserWarning):
    """A randomness or gradient-masking check found that an evaluation may overstate robustness."""


class ProvenanceWarning(UserWarning):
    """A tracked run was resumed by other code than started it (another commit, uncommitted changes, advbayes)."""


MAX_ERROR_TEXT = 4000  # characters kept of an error's message (MLflow tags hold 5,000)


def error_text(error: BaseException) -> str:
    """One line: the exception's type and message (an HTTP client's timeout as the request that timed out, not
    the client's page of retry internals)."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if "Timeout" in message and "Max retries exceeded" in message:
        request = re.search(r"API request to (\S+) failed", message)
        target = request.group(1) if request else "the server"
        message = f"the request to {target} timed out (no answer within MLFLOW_HTTP_REQUEST_TIMEOUT, after retries)"
    return f"{type(error).__name__}: {message}"[:MAX_ERROR_TEXT] if message else type(error).__name__
