"""The DVC stages, each run as `python -m stages.<name>`: importing this package first imports `finetune`, so its
filters of library notices (finetune/__init__.py) are in place before any stage imports a library that prints one."""

import finetune  # noqa: F401
