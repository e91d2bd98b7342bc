from sedna_sam.cli import main

raise SystemExit(main())
