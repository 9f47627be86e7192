"""The application side of a cell: one executor that runs workflow DAGs against an engine,
and the release policies (client modes) that decide when each ready call is issued."""
