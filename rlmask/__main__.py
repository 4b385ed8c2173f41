from rlmask.cli import main

raise SystemExit(main())
