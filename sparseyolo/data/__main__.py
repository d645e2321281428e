"""`python -m sparseyolo.data {fetch,aerial,composite,synth} ...`: the same as `sparseyolo data ...`
(`sparseyolo.data.cli`)."""

from sparseyolo.data.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
