"""The data layer: typed tables, the engine and session factory, and the read queries.

`models` owns everything that knows the schema: the SQLAlchemy tables
(`models.tables`), the database handle with its write and snapshot transactions
(`models.database`), the outbox append helper every action uses
(`models.outbox`), who may see what (`models.visibility`) and the state snapshot
that `register` returns (`models.state`). It imports nothing else of ours.
"""
