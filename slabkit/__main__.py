from slabkit.ui.cli import main

raise SystemExit(main())
