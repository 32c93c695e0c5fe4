from attnprof.cli import main

raise SystemExit(main())
