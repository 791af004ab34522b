"""Every state change: `do_*` functions that write rows and their outbox events.

An action takes a `Session` inside a write transaction (`Database.write()`), locks the
realm first (`models.outbox.lock_realm`), validates, writes, and appends its events
with their recipients (docs/architecture.md §3, §4). It never commits: the caller's transaction
makes the change and its events visible together, or neither. Errors are
`actions.errors.ActionError` subclasses raised before anything is written.
"""
