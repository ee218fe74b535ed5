"""The DICOM network destination (placeholder: being written)."""

from pacsguard.daemon.extension import Destination, Options


class DicomDestination(Destination):
    """C-STORE objects to a remote DICOM node."""

    name = "dicom"
    Options = Options
