"""`python -m sparseyolo.bench.sparse_conv` = `sparseyolo bench sparse-conv`."""

from sparseyolo.bench.sparse_conv.cli import main

raise SystemExit(main())
