"""Every state change: `do_*` functions that write rows and their outbox events.

An action takes a `Session` inside a write transaction (`Database.write()`), locks the
realm first (`models.outbox.lock_realm`), validates, writes, and appends its events
with their recipients (docs/architecture.md §3, §4). It never commits: the caller's transaction
makes the change and its events visible together, or neither. Errors are
`actions.errors.ActionError` subclasses raised before anything is written.

An action done for a user (every one the HTTP API calls) takes the lock as that user
(`actions.actors`): it reads the acting user again under the lock and refuses one
deactivated (`ActorDeactivated`) or whose current role lacks what it needs (a
`NotAllowed`, `AdministratorRequired` for owner and administrator actions), whatever
authentication found before the transaction began. `acting_user_id=None` is the
machine's administrator (the command line, the demo, the probe).
"""
