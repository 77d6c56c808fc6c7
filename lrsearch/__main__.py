from lrsearch.cli import main

raise SystemExit(main())
