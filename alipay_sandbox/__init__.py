"""A local stand-in for the Alipay open platform gateway.

Run it with ``python -m alipay_sandbox``; see README.md in this directory.
"""

__all__ = ["__version__"]

__version__ = "1.2.0"
