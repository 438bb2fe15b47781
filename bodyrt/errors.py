"""The project's exception types. The CLI prints one line for any of them and exits non-zero."""


class BodyrtError(Exception):
    """Base of every error bodyrt raises on purpose."""


class BodyModelError(BodyrtError):
    """A body-model file (SMPL, SMPL-X) is unreadable or has the wrong layout."""


class CheckpointError(BodyrtError):
    """A checkpoint is unreadable, not a checkpoint, or has missing or mis-shaped tensors."""


class BundleError(BodyrtError):
    """An exported bundle is missing, incomplete, tampered with, or of another format version."""


class ExportError(BodyrtError):
    """Exporting a stage failed or the exported graph disagrees with PyTorch."""


class InputError(BodyrtError):
    """Bad user input: an unreadable or odd image, an empty or outside box, a bad argument."""


class BackendUnavailableError(BodyrtError):
    """A backend was asked for whose libraries or hardware are missing."""
