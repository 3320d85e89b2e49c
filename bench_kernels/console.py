"""A quiet console: library messages that say nothing a user can act on are dropped at their source (the libraries'
own loggers and switches); every other warning still prints."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# Logger name -> fragments of the messages it logs that are expected on every run, for each the reason.
EXPECTED_MESSAGES = {
    # torchao's optional kernels built for other GPUs or torch builds (mxfp8, CUTLASS sm90a): torchao runs without them
    "torchao": ("Failed to load",),
    # torchao registers its enums as an older torch wanted; this torch warns that doing so is deprecated
    "torch.utils._pytree": ("Calling register_constant() on Enum subclasses is deprecated",),
}


class DropExpected(logging.Filter):
    """Drops records whose message contains one of the fragments."""

    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(fragment in record.getMessage() for fragment in self.fragments)


def quiet_libraries() -> None:
    """Drop the expected messages (before the libraries are imported, or after), and transformers' progress bars
    (one per model load and save: the sweep prints its own progress). Idempotent."""
    from transformers.utils import logging as transformers_logging

    for name, fragments in EXPECTED_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropExpected) for f in logger.filters):
            logger.addFilter(DropExpected(fragments))
    transformers_logging.disable_progress_bar()
