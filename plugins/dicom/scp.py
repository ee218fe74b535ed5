"""The DICOM network source (placeholder: being written)."""

from pacsguard.daemon.extension import Options, Source


class DicomSource(Source):
    """Receive C-STORE / answer C-ECHO as this node's AE (the `node:` section)."""

    name = "dicom"
    Options = Options
