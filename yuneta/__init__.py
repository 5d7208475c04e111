"""Yuneta for Python: a gobj/gclass actor runtime mirroring the Yuneta framework.

`yuneta/` is the kernel (gclass declarations, gobjs as pykka actors running transitions
machines, command parsing, config loading, logging, the I/O and TLS layers, the
inter-event protocol). It knows nothing of the certificate life cycle: that lives in
`gclasses/`.
"""

__version__ = "0.1.0"
