"""DICOM networking: the C-STORE/C-ECHO receiver (source) and the C-STORE sender (destination)."""

from pacsguard.daemon.hookspecs import hookimpl

from .scp import DicomSource
from .scu import DicomDestination


@hookimpl
def pacsguard_register_sources(register):
    register(DicomSource)


@hookimpl
def pacsguard_register_destinations(register):
    register(DicomDestination)
