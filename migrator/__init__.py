"""mlflow-migrator: move a whole MLflow tracking server, resumable, verifiable, with lineage."""

import os

# Arrow allocates through the system allocator in this process unless the user chose one.
# Arrow's default (mimalloc) keeps the pages it freed: the driver reads and writes manifests
# of millions of rows a row group at a time, and with mimalloc its peak grew by 1.3-2 MB more
# between 1,000 and 100,000 runs (measured apart; README, "Benchmark", memory). Arrow reads the
# variable once, when it is first imported, so it is set before anything imports it.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

__version__ = "0.1.0"
