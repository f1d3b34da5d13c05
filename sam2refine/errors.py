"""Errors the engine raises: each names the problem and what the user can do about it."""


class SAM2RefineError(Exception):
    """Base class for every error the engine reports to a user."""


class VolumeError(SAM2RefineError):
    """The input volume or label file cannot be read or is unusable."""


class PromptError(SAM2RefineError):
    """A prompt is malformed, outside the volume, or names an unknown object."""


class CheckpointError(SAM2RefineError):
    """A model checkpoint is missing, corrupt, unsafe to load, or for another model."""


class WeightsError(SAM2RefineError):
    """Weights cannot be found in the catalogue, downloaded or verified."""


class ExportError(SAM2RefineError):
    """A segmentation cannot be written."""


class CancelledError(SAM2RefineError):
    """The user cancelled a long operation; work finished before the cancel is kept."""


class DatasetError(SAM2RefineError):
    """A training / evaluation dataset is missing files, labels or its dataset.json."""


class PromptGeneratorError(SAM2RefineError):
    """A prompt generator checkpoint or prompt source cannot be used for this volume."""


class AdapterError(SAM2RefineError):
    """An adapter file is corrupt or was trained for another base model or image size."""
