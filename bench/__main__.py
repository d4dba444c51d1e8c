"""``python -m bench`` (``make bench``): the proxy benchmark of ``bench.proxy``."""

from bench.proxy import main

raise SystemExit(main())
