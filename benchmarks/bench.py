"""Runs jaxcheck's benchmark: ``python benchmarks/bench.py --help`` (same as ``jaxcheck bench``)."""

from jaxcheck.bench import main

raise SystemExit(main())
