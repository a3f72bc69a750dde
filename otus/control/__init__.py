"""Control planes: JSON-RPC over a Unix socket, the Kafka command plane, Kubernetes agent mode.

The plane protocol and the settings of the optional planes are in :mod:`otus.control.base`;
the commands they all serve are in :mod:`otus.control.commands`.
"""
