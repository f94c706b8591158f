from __future__ import annotations

from attractor.cli import main

raise SystemExit(main())
