"""The order model shared by every stage: schemas, tables, the lifecycle state machine."""
