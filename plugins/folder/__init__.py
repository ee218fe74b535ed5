"""Folders: the watched inbound folder source and the folder destination."""

from pacsguard.daemon.hookspecs import hookimpl

from .destination import FolderDestination
from .source import FolderSource


@hookimpl
def pacsguard_register_sources(register):
    register(FolderSource)


@hookimpl
def pacsguard_register_destinations(register):
    register(FolderDestination)
