"""``python3 -m devcluster build|up|demo`` from a checkout of the repository."""

from devcluster.commands import main

raise SystemExit(main())
