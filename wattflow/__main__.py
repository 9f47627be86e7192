from wattflow.cli import main

raise SystemExit(main())
