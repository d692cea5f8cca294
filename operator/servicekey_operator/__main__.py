"""``python -m servicekey_operator``: the same as the ``servicekey-operator`` command."""

from servicekey_operator.cli import main

raise SystemExit(main())
