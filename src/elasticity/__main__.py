from elasticity.cli import main

raise SystemExit(main())
