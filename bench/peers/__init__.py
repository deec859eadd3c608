"""Peer servers the fan-out benchmark compares synchub against (see ``servers.py`` and README.md)."""
