"""mailfast: a fast SMTP server with pre-forked uvloop workers and a Cython parser."""

__version__ = "0.1.0"
