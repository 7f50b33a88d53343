"""huggingface_hub's log lines as ours: its default stderr handler removed (each line printed once, by
the root handler), one line per retry saying what failed (``_RetryLines``) and one per resumed download
(``_ResumeLines``). Part of ``hub``, the only other module that imports huggingface_hub."""

from __future__ import annotations

import logging


class _RetryLines(logging.Filter):
    """huggingface_hub logs each failed attempt and then "Retrying in Ns [Retry n/m]."; this keeps one
    line per retry (the retry, saying what failed) and drops the attempt's own line."""

    def __init__(self) -> None:
        super().__init__()
        self.cause = ""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if " thrown while requesting " in message or message.startswith("HTTP Error "):
            self.cause = message
            return False
        if message.startswith(("Retrying in", "Rate limited")):
            record.msg, record.args = f"Hub request failed ({self.cause or 'no detail'}); {message}", ()
            self.cause = ""
        return True


_RETRY_FILTER = _RetryLines()


class _ResumeLines(logging.Filter):
    """huggingface_hub logs a download cut short as "Error while downloading from URL: ERROR" and, on a
    second line, what it does next: this makes it one line per resume and drops the last attempt's
    (the command's own error line says the download failed)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("Error while downloading from "):
            return True
        first, _, then = message.partition("\n")
        if "Max retries" in then:
            return False
        record.msg, record.args = f"{' '.join(first.split())}; resuming the download", ()
        return True


_RESUME_FILTER = _ResumeLines()


def tame_hub_logging() -> None:
    """huggingface_hub prints its warnings through its own stderr handler and also passes them on to
    the root logger (ours): remove its default handler, so each line is printed once, by the root
    handler (or Python's last-resort handler when nothing is configured), and merge retry lines."""
    import huggingface_hub.utils._http  # noqa: F401 - the module whose logger reports retries

    library = logging.getLogger("huggingface_hub")
    for handler in list(library.handlers):
        if type(handler) is logging.StreamHandler:
            library.removeHandler(handler)
    http = logging.getLogger("huggingface_hub.utils._http")
    if _RETRY_FILTER not in http.filters:
        http.addFilter(_RETRY_FILTER)
    download = logging.getLogger("huggingface_hub.file_download")
    if _RESUME_FILTER not in download.filters:
        download.addFilter(_RESUME_FILTER)
