"""The application shell: factory, webhook blueprint, operator API, monitoring, worker, CLI.

Everything here may import every layer below; nothing below imports it.
"""

from crm.app.factory import create_app

__all__ = ["create_app"]
